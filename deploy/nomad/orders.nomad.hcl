# The app with Outrigger as a sidecar task: started before the app (prestart, sidecar = true),
# kept running beside it, stopped after it.
job "orders" {
  datacenters = ["dc1"]
  type        = "service"

  group "orders" {
    count = 2

    network {
      mode = "bridge"
      port "http" {
        to = 8080
      }
    }

    task "outrigger" {
      driver = "docker"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      config {
        image = "outrigger:latest"
      }

      # SIGTERM starts the ordered stop: the shutdown delay plus the drain timeout.
      kill_timeout = "30s"

      env {
        OUTRIGGER_UPSTREAMS         = "payments,users"
        OUTRIGGER_DISCOVERY         = "consul://${attr.unique.network.ip-address}:8500"
        OUTRIGGER_REGISTER          = "discovery"
        OUTRIGGER_REGISTER_SERVICE  = "orders"
        OUTRIGGER_REGISTER_ADDRESS  = "${NOMAD_HOST_ADDR_http}"
        OUTRIGGER_REGISTER_CHECK    = "http:/healthz?interval=5s"
        # Outrigger checks the app itself and keeps a TTL check: the check runs where the
        # app's traffic comes from, whatever the agent's view of the allocation's network.
        OUTRIGGER_REGISTER_CONSUL_CHECK = "ttl"
        OUTRIGGER_STATE_DIR         = "/alloc/data/outrigger"
        OUTRIGGER_SHUTDOWN_DELAY    = "5s"
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }

    task "app" {
      driver = "docker"

      config {
        image = "example/orders:1.0"
        ports = ["http"]
      }

      env {
        HTTP_PROXY = "http://127.0.0.1:15001"
      }
    }
  }
}
