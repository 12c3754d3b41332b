# Debian's PgBouncer configured from the environment the compose file gives it (DB_HOST,
# DB_NAME, DB_USER, DB_PASSWORD, AUTH_TYPE, LISTEN_PORT, POOL_MODE, DEFAULT_POOL_SIZE,
# MAX_CLIENT_CONN), for machines that cannot pull an image of it.
ARG BASE=local/debian-py:bookworm
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends pgbouncer=1.* postgresql-client-15=15.* \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres /etc/pgbouncer /var/run/postgresql
COPY pgbouncer-entrypoint.sh /usr/local/bin/
# hadolint ignore=DL3066
USER postgres
ENTRYPOINT ["pgbouncer-entrypoint.sh"]
