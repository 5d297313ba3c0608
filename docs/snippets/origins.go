package snippets

import (
	"net/http"
	"strings"
	"sync"

	"github.com/chiws/chiws"
	"go.uber.org/zap"
)

// NewWithOrigins is the AllowedOrigins example of docs/origins.md.
func NewWithOrigins(logger *zap.Logger) *chiws.Middleware {
	return chiws.New(chiws.Options{
		AllowedOrigins: []string{
			"https://client.com",   // exactly this origin (port 443)
			"https://*.client.com", // any subdomain, not client.com itself
			"http://localhost:*",   // local development, any port
		},
		Logger: logger, // rejections are logged at Debug and counted in Stats
	})
}

// OriginSet is a set of allowed origins that may change while the server
// runs, for example when a customer registers a domain.
type OriginSet struct {
	mu      sync.RWMutex
	origins map[string]bool
}

// Add allows origin, given as "scheme://host[:port]".
func (s *OriginSet) Add(origin string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.origins == nil {
		s.origins = make(map[string]bool)
	}
	s.origins[strings.ToLower(origin)] = true
}

// Allowed is an Options.AllowOriginFunc. It runs on the request path: it
// takes a read lock and returns, it never blocks on I/O.
func (s *OriginSet) Allowed(r *http.Request, origin string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.origins[strings.ToLower(origin)]
}

// NewWithOriginFunc is the AllowOriginFunc example of docs/origins.md.
func NewWithOriginFunc(origins *OriginSet) *chiws.Middleware {
	return chiws.New(chiws.Options{
		// Replaces AllowedOrigins and the same-origin default entirely:
		// a request from the server's own pages needs its origin in the set.
		AllowOriginFunc: origins.Allowed,
	})
}
