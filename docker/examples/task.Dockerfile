# A worker image with a team's own task, registered through the helios_hpo.tasks
# entry point of its package (see README, "Adding a task").
# Build: docker build -f docker/examples/task.Dockerfile -t my-team/helios-hpo-worker my-tasks/
FROM helios-hpo-worker:0.1.0

USER 0:0
COPY . /opt/my-tasks
# hadolint ignore=DL3013
RUN pip install --no-cache-dir /opt/my-tasks
USER 10001:10001
