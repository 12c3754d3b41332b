# Debian's PostgreSQL with the official image's contract (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB, PGDATA; the same data volume path), for machines that cannot pull it.
ARG BASE=local/debian-py:bookworm
FROM ${BASE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15=15.* \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/
VOLUME ["/var/lib/postgresql/data"]
# hadolint ignore=DL3066
USER postgres
ENTRYPOINT ["postgres-entrypoint.sh"]
# Host networking: listen on the address the service's name resolves to (its extra_hosts
# entry), beside any server the machine already runs on 127.0.0.1:5432.
CMD ["postgres", "-c", "listen_addresses=postgres"]
