# A stand-in for the `apache/kafka:4.1.1` image of docker-compose.yml where no registry is reachable:
# Debian's Java 17 and the Kafka 4.1.1 jars scripts/services fetches from Maven Central, with an
# entrypoint that turns KAFKA_* variables into server.properties as the official image does
# (KAFKA_LOG_DIRS -> log.dirs) and the two tools compose calls under /opt/kafka/bin.
# The build context is assembled by scripts/image-demo. Not for production.
ARG BASE_IMAGE=debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
COPY libs /opt/kafka/libs
COPY log4j2.yaml /opt/kafka/config/log4j2.yaml
COPY kafka-entrypoint /usr/local/bin/kafka-entrypoint
COPY kafka-tool /opt/kafka/bin/kafka-tool
RUN ln -s kafka-tool /opt/kafka/bin/kafka-topics.sh \
 && ln -s kafka-tool /opt/kafka/bin/kafka-broker-api-versions.sh
EXPOSE 9092
ENTRYPOINT ["kafka-entrypoint"]
