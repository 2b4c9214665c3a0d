# engramd and the engram CLI in a small Debian image.
#
#   docker build -t engram .
#   docker run -d -p 50051:50051 -p 9464:9464 -v engram-data:/data engram
#
# Configuration: any engramd flag, after the image name, or as an environment
# variable FLAGS_<name> (e.g. -e FLAGS_sync=false -e FLAGS_token_file=/run/secrets/tokens).

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libgrpc++-dev protobuf-compiler-grpc \
      libprotobuf-dev protobuf-compiler libabsl-dev libopenblas-dev \
      prometheus-cpp-dev libmicrohttpd-dev libssl-dev zlib1g-dev librocksdb-dev \
      libjemalloc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY proto proto
COPY server server
COPY client client
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DENGRAM_BUILD_TESTS=OFF \
 && cmake --build /build -j"$(nproc)" --target engramd engram \
 && strip /build/bin/engramd /build/bin/engram

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libabsl20220623 libgrpc++1.51 libgrpc29 libprotobuf32 libopenblas0-pthread \
      libprometheus-cpp-core1.0 libmicrohttpd12 libssl3 librocksdb7.8 zlib1g \
      libjemalloc2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home engram \
 && mkdir /data && chown engram:engram /data
COPY --from=build /build/bin/engramd /build/bin/engram /usr/local/bin/
USER engram
WORKDIR /data
VOLUME /data
EXPOSE 50051 9464
# Inside a container engramd listens on every interface; publish the ports
# only where they should be reachable, and turn on TLS and tokens for more
# than a trusted network (see README, Security).
ENV FLAGS_listen=0.0.0.0:50051 \
    FLAGS_metrics_listen=0.0.0.0:9464 \
    FLAGS_data_dir=/data
# Probes the port FLAGS_listen names, wherever it was moved.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD engram --addr="127.0.0.1:${FLAGS_listen##*:}" --timeout_s=2 health engram.v1.Engram
# Every flag can be set as FLAGS_<name> (docker -e, a Kubernetes ConfigMap).
ENTRYPOINT ["engramd", "--tryfromenv=listen,metrics_listen,data_dir,sync,accept_data_loss,restore_from,max_restore_mb,expiry_sweep_ms,log_level,token_file,tls_cert,tls_key,tls_client_ca,blas_coretype,blas_threads,retrieval_threads,fit_workers,rpc_threads,max_message_mb,max_dimension,max_batch,max_queries,max_stores,max_patterns_per_store,max_top_k,max_steps,max_label_bytes,max_metadata_entries,max_metadata_bytes,max_low_rank_values,max_calibration_work,shutdown_grace_s,metrics_per_store,role,cluster,shard_group,shard_groups,shards,topology_file,shard_tls_ca,shard_tls_cert,shard_tls_key,shard_token_file"]
