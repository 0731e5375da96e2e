# Build the release binary, then run it as a non-root user in a slim image.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin outrigger

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/outrigger --create-home outrigger
COPY --from=build /src/target/release/outrigger /usr/local/bin/outrigger
USER outrigger
# In a pod, the app reaches the sidecar on localhost; the listeners stay on loopback unless
# OUTRIGGER_LISTEN / OUTRIGGER_ADMIN_LISTEN say otherwise.
ENV OUTRIGGER_LISTEN=127.0.0.1:15001 \
    OUTRIGGER_ADMIN_LISTEN=127.0.0.1:15000 \
    OUTRIGGER_STATE_DIR=/var/lib/outrigger \
    OUTRIGGER_LOG=info,json
EXPOSE 15001 15000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/outrigger"]
