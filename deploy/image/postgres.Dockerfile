# A stand-in for the `postgres:15` image of docker-compose.yml where no registry is reachable:
# Debian's PostgreSQL 15 with an entrypoint that honours the same POSTGRES_PASSWORD / POSTGRES_DB
# variables and `postgres -c ...` command. Built by scripts/image-demo; not for production.
ARG BASE_IMAGE=debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint"]
CMD ["postgres"]
