# syntax=docker/dockerfile:1
#
# knas runtime image: the `knas` binary, libtorch (CUDA-capable, from the same pinned
# `torch` wheel the project builds against) and the built-in policies. Runs as a non-root
# user; the entrypoint is `knas serve`.
#
#   docker build -t knas:0.2.0 .
#   docker run -p 9400:9400 -v $PWD/policies:/var/lib/knas/policies knas:0.2.0

# ---- build: compile knas and the policies -----------------------------------------------
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Installs the pinned torch wheel into /src/.venv and the wasm target first, from the two
# files that decide them: an edit of the sources does not download libtorch again.
COPY Cargo.toml ./
COPY scripts/setup.sh scripts/
RUN scripts/setup.sh
COPY . .
RUN scripts/setup.sh \
 && cargo build --release --locked --bin knas \
 && target/release/knas policy build --all --profile policy --out-dir /out/policies \
 && install -D target/release/knas /out/bin/knas \
 # libtorch and the CUDA libraries it loads, keeping the wheel's layout (torch/lib finds
 # its CUDA libraries through ../../nvidia, relative to itself).
 && site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && mkdir -p /out/site-packages/torch \
 && cp -a "$site/torch/lib" /out/site-packages/torch/lib \
 && cp -a "$site/nvidia" /out/site-packages/nvidia

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 knas \
 && useradd --uid 10001 --gid knas --no-create-home --shell /usr/sbin/nologin knas \
 && mkdir -p /var/lib/knas/policies /var/lib/knas/store /etc/knas /opt/katib/data \
 && chown -R knas:knas /var/lib/knas /opt/katib/data
COPY --from=build /out/site-packages /opt/knas/site-packages
COPY --from=build /out/bin/knas /usr/local/bin/knas
COPY --from=build /out/policies /opt/knas/policies
COPY examples/knas.yaml /etc/knas/knas.example.yaml
# Default configuration for the image's layout; the Helm chart mounts its own over it.
COPY <<CONFIG /etc/knas/knas.yaml
listen: 0.0.0.0:9400
policy-dir: /var/lib/knas/policies
store: /var/lib/knas/store/knas-runs.db
CONFIG
# The binary's rpath points into the build tree; here libtorch lives under /opt/knas.
ENV LD_LIBRARY_PATH=/opt/knas/site-packages/torch/lib \
    KNAS_LOG=info
USER 10001:10001
WORKDIR /var/lib/knas
# 9400: knas serve (API, /metrics) or knas katib (/metrics); 6789: knas katib (gRPC).
EXPOSE 9400 6789
ENTRYPOINT ["knas", "serve"]
CMD ["--config", "/etc/knas/knas.yaml"]
