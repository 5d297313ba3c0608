// Package docs checks the guides in this directory: every ```go block is a
// verbatim excerpt of a compiled file under snippets/ (whose own tests run
// it), every relative link resolves, and the origin table of origins.md is
// run through the middleware's origin policy.
package docs

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/chiws/chiws"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// guides are the files whose code this package checks.
var guides = []string{
	"getting-started.md",
	"origins.md",
	"keepalive.md",
	"lifecycle.md",
	"from-aspnet-core.md",
	"design.md",
}

var snippetMarker = regexp.MustCompile(`^<!-- snippet: (\S+) -->$`)

// block is a fenced code block of a guide.
type block struct {
	lang, text, snippet string
	line                int
}

func readBlocks(t *testing.T, guide string) (lines []string, blocks []block) {
	t.Helper()
	f, err := os.Open(guide)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "```") {
			continue
		}
		b := block{lang: strings.TrimPrefix(lines[i], "```"), line: i + 1}
		if i > 0 {
			if m := snippetMarker.FindStringSubmatch(lines[i-1]); m != nil {
				b.snippet = m[1]
			}
		}
		var body []string
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			body = append(body, lines[i])
		}
		if i == len(lines) {
			t.Fatalf("%s:%d: unterminated code block", guide, b.line)
		}
		b.text = strings.Join(body, "\n") + "\n"
		blocks = append(blocks, b)
	}
	return lines, blocks
}

// TestGoBlocksAreCompiled checks that each ```go block follows a
// <!-- snippet: path --> marker and appears verbatim in that file.
func TestGoBlocksAreCompiled(t *testing.T) {
	for _, guide := range guides {
		t.Run(guide, func(t *testing.T) {
			_, blocks := readBlocks(t, guide)
			for _, b := range blocks {
				if b.lang != "go" {
					if b.snippet != "" {
						t.Errorf("%s:%d: snippet marker on a %q block", guide, b.line, b.lang)
					}
					continue
				}
				if b.snippet == "" {
					t.Errorf("%s:%d: go block without a <!-- snippet: path --> marker", guide, b.line)
					continue
				}
				src, err := os.ReadFile(filepath.FromSlash(b.snippet))
				if err != nil {
					t.Errorf("%s:%d: %v", guide, b.line, err)
					continue
				}
				if !strings.HasSuffix(b.snippet, ".go") || !strings.Contains(string(src), b.text) {
					t.Errorf("%s:%d: block is not a verbatim excerpt of %s:\n%s", guide, b.line, b.snippet, b.text)
				}
			}
		})
	}
}

// siblings are the guides of this directory that these guides link to
// but this package does not check.
var siblings = map[string]bool{"proxies.md": true, "reliability.md": true, "benchmarks.md": true}

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestLinks checks that relative links point at existing files and, for
// links into the guides, at existing headings.
func TestLinks(t *testing.T) {
	anchors := map[string]map[string]bool{}
	for _, guide := range guides {
		lines, _ := readBlocks(t, guide)
		anchors[guide] = headingAnchors(lines)
	}
	for _, guide := range guides {
		lines, _ := readBlocks(t, guide)
		inFence := false
		for n, line := range lines {
			if strings.HasPrefix(line, "```") {
				inFence = !inFence
			}
			if inFence {
				continue
			}
			for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, frag, _ := strings.Cut(target, "#")
				if file == "" {
					file = guide
				}
				if _, err := os.Stat(filepath.FromSlash(file)); err != nil {
					if siblings[file] {
						// Written alongside these guides; checked once present.
						t.Logf("%s:%d: %s does not exist yet", guide, n+1, target)
						continue
					}
					t.Errorf("%s:%d: broken link %s", guide, n+1, target)
					continue
				}
				if a, ok := anchors[file]; ok && frag != "" && !a[frag] {
					t.Errorf("%s:%d: no heading #%s in %s", guide, n+1, frag, file)
				}
			}
		}
	}
}

// headingAnchors returns GitHub's anchors for the headings in lines.
func headingAnchors(lines []string) map[string]bool {
	out := map[string]bool{}
	inFence := false
	for _, line := range lines {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteRune('-')
			}
		}
		out[b.String()] = true
	}
	return out
}

// TestOriginTable runs every row of the table that follows
// <!-- table: origins --> in origins.md through the middleware.
func TestOriginTable(t *testing.T) {
	lines, _ := readBlocks(t, "origins.md")
	start := -1
	for i, l := range lines {
		if l == "<!-- table: origins -->" {
			start = i + 3 // marker, header, separator
		}
	}
	if start < 0 {
		t.Fatal("origins.md has no <!-- table: origins --> marker")
	}
	code := regexp.MustCompile("`([^`]*)`")
	rows := 0
	for _, l := range lines[start:] {
		if !strings.HasPrefix(l, "|") {
			break
		}
		cells := strings.Split(strings.Trim(l, "|"), "|")
		if len(cells) != 4 {
			t.Fatalf("row %q: want 4 cells", l)
		}
		var allowed []string
		for _, m := range code.FindAllStringSubmatch(cells[0], -1) {
			allowed = append(allowed, m[1])
		}
		host := code.FindStringSubmatch(cells[1])
		origin := code.FindStringSubmatch(cells[2])
		result := strings.TrimSpace(cells[3])
		if host == nil {
			t.Fatalf("row %q: no host", l)
		}
		rows++
		t.Run(strings.Join(allowed, ",")+" "+strings.TrimSpace(cells[2]), func(t *testing.T) {
			m := chiws.New(chiws.Options{AllowedOrigins: allowed})
			r := httptest.NewRequest(http.MethodGet, "/ws", nil)
			r.Host = host[1]
			if origin != nil {
				r.Header.Set("Origin", origin[1])
			}
			ok := originAllowed(m, r)
			switch {
			case strings.HasPrefix(result, "allowed") && !ok:
				t.Errorf("%s: 403, but the table says allowed", l)
			case strings.HasPrefix(result, "403") && ok:
				t.Errorf("%s: allowed, but the table says 403", l)
			case !strings.HasPrefix(result, "allowed") && !strings.HasPrefix(result, "403"):
				t.Errorf("%s: result must start with allowed or 403", l)
			}
		})
	}
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	r.Host = "server.com"
	r.Header["Origin"] = []string{"https://server.com", "https://server.com"}
	if originAllowed(chiws.New(chiws.Options{}), r) {
		t.Error("several Origin headers: allowed, origins.md says 403")
	}
	if rows < 10 {
		t.Errorf("only %d rows in the origin table", rows)
	}
}

// originAllowed reports whether ws lets r, made an upgrade request, through
// to the route: its origin policy answers 403 before any route runs.
func originAllowed(ws *chiws.Middleware, r *http.Request) bool {
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	rec := httptest.NewRecorder()
	ws.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})).ServeHTTP(rec, r)
	return rec.Code != http.StatusForbidden
}

// TestPlainRequestsDoNotAllocate backs design.md: the middleware passes
// ordinary requests through without allocating.
func TestPlainRequestsDoNotAllocate(t *testing.T) {
	ws := chiws.New(chiws.Options{})
	next := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	h := ws.Handler(next)
	r := httptest.NewRequest(http.MethodGet, "/api/items", nil)
	r.Header.Set("Connection", "keep-alive")
	w := discardWriter{}
	if n := testing.AllocsPerRun(100, func() { h.ServeHTTP(w, r) }); n != 0 {
		t.Errorf("%v allocations per plain request, design.md says 0", n)
	}
}

type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return io.Discard.Write(p) }
func (discardWriter) WriteHeader(int)             {}
