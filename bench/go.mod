module github.com/chiws/chiws/bench

go 1.26.0

replace github.com/chiws/chiws => ../

require (
	github.com/chiws/chiws v0.0.0-00010101000000-000000000000
	github.com/coder/websocket v1.8.15
	github.com/go-chi/chi/v5 v5.5.0
	github.com/gorilla/websocket v1.5.3
	go.uber.org/goleak v1.3.0
	golang.org/x/net v0.58.0
)

require (
	github.com/chiws/chiws/http2test v0.0.0-00010101000000-000000000000
	go.uber.org/multierr v1.10.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)

replace github.com/chiws/chiws/http2test => ../http2test
