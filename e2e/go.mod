module github.com/chiws/chiws/e2e

go 1.26.0

replace github.com/chiws/chiws => ../

replace github.com/chiws/chiws/example => ../example

replace github.com/chiws/chiws/broadcast/natsbroker => ../broadcast/natsbroker

replace github.com/chiws/chiws/broadcast/redisbroker => ../broadcast/redisbroker

require (
	github.com/chiws/chiws v0.0.0-00010101000000-000000000000
	github.com/chiws/chiws/example v0.0.0-00010101000000-000000000000
	github.com/chromedp/chromedp v0.23.0
	github.com/coder/websocket v1.8.15
	github.com/go-chi/chi/v5 v5.5.0
	github.com/gorilla/websocket v1.5.3
	go.uber.org/goleak v1.3.0
	go.uber.org/zap v1.28.0
)

require (
	github.com/chromedp/cdproto v0.160.1 // indirect
	github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect
	go.uber.org/multierr v1.10.0 // indirect
)
