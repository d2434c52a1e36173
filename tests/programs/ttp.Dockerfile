# The images of examples/ttp-pipeline.yaml: one program of tests/programs each, e.g.
#   docker build -f tests/programs/ttp.Dockerfile --build-arg PROGRAM=ttp_source \
#     -t flowctl-example/ttp-source:1 tests/programs
# (PROGRAM: ttp_source, ttp_processor, consumer_app). BASE: any image with python3.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG PROGRAM
ENV PROGRAM=${PROGRAM}
WORKDIR /app
COPY ttp_common.py ${PROGRAM}.py /app/
ENTRYPOINT ["sh", "-c", "exec python3 -u /app/$PROGRAM.py \"$@\"", "--"]
