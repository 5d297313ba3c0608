module github.com/chiws/chiws/docs/brokersnippets

go 1.26.0

replace github.com/chiws/chiws => ../../

replace github.com/chiws/chiws/broadcast/natsbroker => ../../broadcast/natsbroker

replace github.com/chiws/chiws/broadcast/redisbroker => ../../broadcast/redisbroker

require (
	github.com/chiws/chiws v0.0.0-00010101000000-000000000000
	github.com/chiws/chiws/broadcast/natsbroker v0.0.0-00010101000000-000000000000
	github.com/chiws/chiws/broadcast/redisbroker v0.0.0-00010101000000-000000000000
	github.com/coder/websocket v1.8.15
	github.com/redis/go-redis/v9 v9.23.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/antithesishq/antithesis-sdk-go v0.8.0-default-no-op // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/go-chi/chi/v5 v5.5.0 // indirect
	github.com/google/go-tpm v0.9.8 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/minio/highwayhash v1.0.4 // indirect
	github.com/nats-io/jwt/v2 v2.8.2 // indirect
	github.com/nats-io/nats-server/v2 v2.15.2 // indirect
	github.com/nats-io/nats.go v1.55.0 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)
