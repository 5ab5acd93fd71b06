# A stand-in for the `jaegertracing/jaeger` image of docker-compose.yml where no registry is
# reachable: the Jaeger v2 binary scripts/services builds from its Go module (all-in-one, in-memory).
# The build context is assembled by scripts/image-demo. Not for production.
ARG BASE_IMAGE=debian:bookworm
FROM ${BASE_IMAGE}
COPY jaeger /usr/local/bin/jaeger
USER 10001:10001
EXPOSE 4317 4318 16686
ENTRYPOINT ["jaeger"]
