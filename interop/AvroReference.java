// The Avro reference implementation (org.apache.avro, Java) and the Kafka Java client, driven by
// the interop tests (tests/it/avro_interop.rs) as a producer and a consumer this project did not
// write. Run in source-file mode: java -cp "$(scripts/avro-reference classpath)" interop/AvroReference.java ...
//
//   fingerprint FILE...                 one line per file: FILE <8 bytes LE hex> <Parsing Canonical Form>
//   produce BROKERS SCHEMA_DIR          JSON lines on stdin -> Kafka (see Outgoing below); prints "produced N"
//   consume BROKERS TOPIC N SCHEMA_DIR  reads N messages from the beginning of TOPIC, decodes each
//                                       (single-object: by fingerprint; Confluent: by --id ID=topic/vN.avsc)
//                                       into the topic's newest schema; prints JSON lines
//   consume-results BROKERS TOPIC DISTINCT SCHEMA_DIR [ID=card-registration-result/vN.avsc...]
//                                       reads TOPIC from the beginning until DISTINCT distinct resultIds
//                                       were seen and the end offsets (taken then) are reached, decodes
//                                       with schemas/card-registration-result; prints every message
//                                       (duplicates included) as a JSON line

import java.io.*;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.time.Duration;
import java.util.*;
import java.util.stream.*;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.*;
import org.apache.avro.io.*;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.*;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;

public class AvroReference {
  static final ObjectMapper JSON = new ObjectMapper();

  public static void main(String[] args) throws Exception {
    switch (args[0]) {
      case "fingerprint" -> fingerprint(Arrays.copyOfRange(args, 1, args.length));
      case "produce" -> produce(args[1], Paths.get(args[2]));
      case "consume" -> consume(args[1], args[2], Integer.parseInt(args[3]), Paths.get(args[4]),
          Arrays.copyOfRange(args, 5, args.length));
      case "consume-results" -> consumeResults(args[1], args[2], Integer.parseInt(args[3]), Paths.get(args[4]),
          Arrays.copyOfRange(args, 5, args.length));
      default -> throw new IllegalArgumentException("unknown command " + args[0]);
    }
  }

  static Schema parse(Path file) throws IOException {
    return new Schema.Parser().parse(file.toFile());
  }

  static String hex(byte[] bytes) {
    StringBuilder s = new StringBuilder();
    for (byte b : bytes) s.append(String.format("%02x", b));
    return s.toString();
  }

  static void fingerprint(String[] files) throws IOException {
    for (String f : files) {
      Schema schema = parse(Paths.get(f));
      long fp = SchemaNormalization.parsingFingerprint64(schema);
      byte[] le = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(fp).array();
      System.out.println(f + " " + hex(le) + " " + SchemaNormalization.toParsingForm(schema));
    }
  }

  // One message to produce: {"topic","key","schema":"card-created/v1.avsc","framing":"single-object"|"confluent",
  // "schemaId":N (confluent only),"record":<the record in Avro's JSON encoding, as a string>}
  static void produce(String brokers, Path schemaDir) throws Exception {
    Properties props = new Properties();
    props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
    props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
    Map<String, Schema> schemas = new HashMap<>();
    int n = 0;
    try (Producer<String, byte[]> producer = new KafkaProducer<>(props, new StringSerializer(), new ByteArraySerializer());
         BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
      List<java.util.concurrent.Future<RecordMetadata>> sent = new ArrayList<>();
      for (String line; (line = in.readLine()) != null; ) {
        if (line.isBlank()) continue;
        JsonNode m = JSON.readTree(line);
        String file = m.get("schema").asText();
        Schema schema = schemas.computeIfAbsent(file, f -> {
          try { return parse(schemaDir.resolve(f)); } catch (IOException e) { throw new UncheckedIOException(e); }
        });
        GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema);
        GenericRecord record = reader.read(null, DecoderFactory.get().jsonDecoder(schema, m.get("record").asText()));
        byte[] value;
        if (m.get("framing").asText().equals("single-object")) {
          value = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), schema).encode(record).array();
        } else {
          // Confluent wire format: magic 0, 4-byte big-endian schema id, the binary datum (Confluent's own
          // serializer is not on Maven Central; the framing is this simple).
          ByteArrayOutputStream out = new ByteArrayOutputStream();
          out.write(0);
          out.write(ByteBuffer.allocate(4).putInt(m.get("schemaId").asInt()).array());
          BinaryEncoder enc = EncoderFactory.get().binaryEncoder(out, null);
          new GenericDatumWriter<GenericRecord>(schema).write(record, enc);
          enc.flush();
          value = out.toByteArray();
        }
        sent.add(producer.send(new ProducerRecord<>(m.get("topic").asText(), m.get("key").asText(), value)));
        n++;
      }
      producer.flush();
      for (var f : sent) f.get();
    }
    System.out.println("produced " + n);
  }

  static void consume(String brokers, String topic, int count, Path schemaDir, String[] ids) throws Exception {
    String folder = topic.replaceFirst("^t-([a-z]+)-.*$", "card-$1");
    List<Path> files;
    try (Stream<Path> s = Files.list(schemaDir.resolve(folder))) {
      files = s.filter(p -> p.toString().endsWith(".avsc"))
          .sorted(Comparator.comparingInt(p -> Integer.parseInt(p.getFileName().toString().replaceAll("\\D", ""))))
          .collect(Collectors.toList());
    }
    Schema newest = parse(files.get(files.size() - 1));
    BinaryMessageDecoder<GenericRecord> singleObject = new BinaryMessageDecoder<>(GenericData.get(), newest);
    for (Path f : files) singleObject.addSchema(parse(f));
    Map<Integer, Schema> confluent = new HashMap<>();
    for (String id : ids) {
      String[] kv = id.split("=", 2);
      confluent.put(Integer.parseInt(kv[0]), parse(schemaDir.resolve(kv[1])));
    }
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    try (Consumer<String, byte[]> consumer = new KafkaConsumer<>(props, new StringDeserializer(), new ByteArrayDeserializer())) {
      List<TopicPartition> partitions = consumer.partitionsFor(topic).stream()
          .map(p -> new TopicPartition(topic, p.partition())).collect(Collectors.toList());
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      int seen = 0;
      long deadline = System.currentTimeMillis() + 60_000;
      while (seen < count && System.currentTimeMillis() < deadline) {
        for (ConsumerRecord<String, byte[]> r : consumer.poll(Duration.ofMillis(500))) {
          byte[] v = r.value();
          GenericRecord record;
          if (v.length > 0 && v[0] == 0) {
            Schema writer = confluent.get(ByteBuffer.wrap(v, 1, 4).getInt());
            BinaryDecoder dec = DecoderFactory.get().binaryDecoder(v, 5, v.length - 5, null);
            record = new GenericDatumReader<GenericRecord>(writer, newest).read(null, dec);
          } else {
            record = singleObject.decode(v);
          }
          ObjectNode line = JSON.createObjectNode();
          line.put("partition", r.partition());
          line.put("offset", r.offset());
          line.put("key", r.key());
          line.set("record", JSON.readTree(GenericData.get().toString(record)));
          System.out.println(JSON.writeValueAsString(line));
          seen++;
        }
      }
      if (seen < count) throw new IllegalStateException("read " + seen + " of " + count + " messages");
    }
  }

  static void consumeResults(String brokers, String topic, int distinct, Path schemaDir, String[] ids) throws Exception {
    List<Path> files;
    try (Stream<Path> s = Files.list(schemaDir.resolve("card-registration-result"))) {
      files = s.filter(p -> p.toString().endsWith(".avsc"))
          .sorted(Comparator.comparingInt(p -> Integer.parseInt(p.getFileName().toString().replaceAll("\\D", ""))))
          .collect(Collectors.toList());
    }
    Schema newest = parse(files.get(files.size() - 1));
    BinaryMessageDecoder<GenericRecord> singleObject = new BinaryMessageDecoder<>(GenericData.get(), newest);
    for (Path f : files) singleObject.addSchema(parse(f));
    Map<Integer, Schema> confluent = new HashMap<>();
    for (String id : ids) {
      String[] kv = id.split("=", 2);
      confluent.put(Integer.parseInt(kv[0]), parse(schemaDir.resolve(kv[1])));
    }
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    // Only what the idempotent producer committed; no transactions are used, but be strict.
    props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    try (Consumer<String, byte[]> consumer = new KafkaConsumer<>(props, new StringDeserializer(), new ByteArrayDeserializer())) {
      List<TopicPartition> partitions = consumer.partitionsFor(topic).stream()
          .map(p -> new TopicPartition(topic, p.partition())).collect(Collectors.toList());
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      Set<String> seen = new HashSet<>();
      Map<TopicPartition, Long> end = null;
      long deadline = System.currentTimeMillis() + 180_000;
      while (System.currentTimeMillis() < deadline) {
        for (ConsumerRecord<String, byte[]> r : consumer.poll(Duration.ofMillis(500))) {
          byte[] v = r.value();
          GenericRecord record;
          if (v.length > 0 && v[0] == 0) {
            Schema writer = confluent.get(ByteBuffer.wrap(v, 1, 4).getInt());
            BinaryDecoder dec = DecoderFactory.get().binaryDecoder(v, 5, v.length - 5, null);
            record = new GenericDatumReader<GenericRecord>(writer, newest).read(null, dec);
          } else {
            record = singleObject.decode(v);
          }
          seen.add(record.get("resultId").toString());
          ObjectNode line = JSON.createObjectNode();
          line.put("partition", r.partition());
          line.put("offset", r.offset());
          line.put("key", r.key());
          line.set("record", JSON.readTree(GenericData.get().toString(record)));
          System.out.println(JSON.writeValueAsString(line));
        }
        if (end == null && seen.size() >= distinct) end = consumer.endOffsets(partitions);
        if (end != null && end.entrySet().stream().allMatch(e -> consumer.position(e.getKey()) >= e.getValue())) return;
      }
      throw new IllegalStateException("read " + seen.size() + " of " + distinct + " distinct results");
    }
  }
}
