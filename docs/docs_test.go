// Package docs checks the guides in this directory and the README: every
// ```go block compiles, either as a verbatim excerpt of a compiled file
// (under snippets/, or brokersnippets/ for the broker modules, whose own
// tests run it) or as a whole program that the test builds; every relative
// link resolves; the origin table of origins.md is run through the
// middleware's origin policy; and the README's options table lists every
// field of chiws.Options.
package docs

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"go/format"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// readme is the repository's README, checked with the guides.
const readme = "../README.md"

// docs returns the files whose code this package checks: the README and
// every guide of this directory.
func docs(t *testing.T) []string {
	t.Helper()
	guides, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(guides) < 10 {
		t.Fatalf("only %d guides found: %q", len(guides), guides)
	}
	slices.Sort(guides)
	return append([]string{readme}, guides...)
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

// isProgram reports whether a go block is a whole file: its first line
// that is neither blank nor a comment is its package clause.
func isProgram(text string) bool {
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "//") {
			continue
		}
		return strings.HasPrefix(line, "package ")
	}
	return false
}

// isExcerpt reports whether text appears in src as whole lines, verbatim
// or indented differently by tabs: a function body may be shown at the
// left margin, and a method shown inside its function.
func isExcerpt(src, text string) bool {
	src = "\n" + src
	lines := strings.SplitAfter(strings.TrimSuffix(text, "\n"), "\n")
	common := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		if n := len(l) - len(strings.TrimLeft(l, "\t")); common < 0 || n < common {
			common = n
		}
	}
	for indent := 0; indent <= 4; indent++ {
		var b strings.Builder
		b.WriteByte('\n')
		for _, l := range lines {
			if strings.TrimSpace(l) != "" {
				b.WriteString(strings.Repeat("\t", indent) + l[max(common, 0):])
			} else {
				b.WriteString(l)
			}
		}
		b.WriteByte('\n')
		if strings.Contains(src+"\n", b.String()) {
			return true
		}
	}
	return false
}

// program is a go block that is a whole file, built where its imports
// resolve.
type program struct {
	doc  string
	line int
	text string
}

// brokerImports are the imports that put a program in the brokersnippets
// module: the library's own module must not depend on them.
var brokerImports = []string{
	"github.com/chiws/chiws/broadcast/natsbroker",
	"github.com/chiws/chiws/broadcast/redisbroker",
	"github.com/nats-io/",
	"github.com/redis/",
}

// moduleDir returns the directory of the module a program is built in:
// this one (the library's), or brokersnippets for the broker modules.
func (p program) moduleDir(t *testing.T) string {
	f, err := parser.ParseFile(token.NewFileSet(), "", p.text, parser.ImportsOnly)
	if err != nil {
		t.Errorf("%s:%d: %v", p.doc, p.line, err)
		return ""
	}
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		for _, b := range brokerImports {
			if strings.HasPrefix(path, b) {
				return "brokersnippets"
			}
		}
	}
	return "."
}

// TestGoBlocksAreCompiled checks that each ```go block of the README and
// the guides either follows a <!-- snippet: path --> marker and appears
// in that file (a compiled file of this repository), or is a whole
// program, which it builds.
func TestGoBlocksAreCompiled(t *testing.T) {
	var programs []program
	readmeChecked := false
	for _, doc := range docs(t) {
		t.Run(filepath.Base(doc), func(t *testing.T) {
			readmeChecked = readmeChecked || doc == readme
			_, blocks := readBlocks(t, doc)
			for _, b := range blocks {
				switch {
				case b.lang != "go" && b.snippet != "":
					t.Errorf("%s:%d: snippet marker on a %q block", doc, b.line, b.lang)
				case b.lang != "go":
				case b.snippet != "":
					path := filepath.Join(filepath.Dir(doc), filepath.FromSlash(b.snippet))
					src, err := os.ReadFile(path)
					if err != nil {
						t.Errorf("%s:%d: %v", doc, b.line, err)
						continue
					}
					if !strings.HasSuffix(path, ".go") || !isExcerpt(string(src), b.text) {
						t.Errorf("%s:%d: block is not an excerpt of %s:\n%s", doc, b.line, b.snippet, b.text)
					}
				case isProgram(b.text):
					if f, err := format.Source([]byte(b.text)); err != nil || !bytes.Equal(f, []byte(b.text)) {
						t.Errorf("%s:%d: program is not gofmt-formatted (%v)", doc, b.line, err)
					}
					programs = append(programs, program{doc, b.line, b.text})
				default:
					t.Errorf("%s:%d: go block is neither a whole program (package ...) nor "+
						"after a <!-- snippet: path --> marker:\n%s", doc, b.line, b.text)
				}
			}
		})
	}
	if readmeChecked && !slices.ContainsFunc(programs, func(p program) bool { return p.doc == readme }) {
		t.Error("no whole program in the README; its chi example is one")
	}
	if len(programs) > 0 {
		buildPrograms(t, programs)
	}
}

// buildPrograms builds each program as a package of its own, a file that
// exists only in an overlay (go build -overlay) in a directory of its
// module, so that its imports resolve as they do for the module's code,
// through the workspace, without the network.
func buildPrograms(t *testing.T, programs []program) {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	tmp := t.TempDir()
	byModule := map[string][]string{} // module dir: package dirs
	replace := map[string]string{}
	where := map[string]string{} // package dir: doc and line
	for i, p := range programs {
		mod := p.moduleDir(t)
		if mod == "" {
			continue
		}
		absMod, err := filepath.Abs(mod)
		if err != nil {
			t.Fatal(err)
		}
		pkg := fmt.Sprintf("docblock_%s_%d", strings.TrimSuffix(strings.ToLower(filepath.Base(p.doc)), ".md"), p.line)
		file := filepath.Join(tmp, fmt.Sprintf("%d.go", i))
		if err := os.WriteFile(file, []byte(p.text), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(absMod, pkg)); err == nil {
			t.Fatalf("%s exists on disk; the overlay needs the name", filepath.Join(mod, pkg))
		}
		replace[filepath.Join(absMod, pkg, "main.go")] = file
		byModule[absMod] = append(byModule[absMod], "./"+pkg)
		where[pkg] = fmt.Sprintf("%s:%d; line n of %d.go is line %d+n there", p.doc, p.line, i, p.line)
	}
	overlay, err := json.Marshal(map[string]any{"Replace": replace})
	if err != nil {
		t.Fatal(err)
	}
	overlayFile := filepath.Join(tmp, "overlay.json")
	if err := os.WriteFile(overlayFile, overlay, 0o644); err != nil {
		t.Fatal(err)
	}
	for mod, pkgs := range byModule {
		// -o: into a directory, which go build needs for several
		// programs, and not into the module.
		args := append([]string{"build", "-overlay", overlayFile, "-o", tmp + string(filepath.Separator)}, pkgs...)
		cmd := exec.Command(gobin, args...)
		cmd.Dir = mod
		// Every dependency is in the module cache or the workspace.
		cmd.Env = append(os.Environ(), "GOPROXY=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			var from []string
			for _, pkg := range pkgs {
				from = append(from, strings.TrimPrefix(pkg, "./")+" is "+where[strings.TrimPrefix(pkg, "./")])
			}
			t.Errorf("go %s in %s: %v\n%s\n(%s)", strings.Join(args, " "), mod, err, out, strings.Join(from, "; "))
		}
	}
}

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestLinks checks that relative links point at existing files and, for
// links into the README and the guides, at existing headings.
func TestLinks(t *testing.T) {
	abs := func(path string) string {
		a, err := filepath.Abs(path)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	anchors := map[string]map[string]bool{} // by absolute path
	for _, doc := range docs(t) {
		lines, _ := readBlocks(t, doc)
		anchors[abs(doc)] = headingAnchors(lines)
	}
	for _, doc := range docs(t) {
		lines, _ := readBlocks(t, doc)
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
				path := filepath.Clean(doc)
				if file != "" {
					path = filepath.Join(filepath.Dir(doc), filepath.FromSlash(file))
				}
				if _, err := os.Stat(path); err != nil {
					t.Errorf("%s:%d: broken link %s", doc, n+1, target)
					continue
				}
				if a, ok := anchors[abs(path)]; ok && frag != "" && !a[frag] {
					t.Errorf("%s:%d: no heading #%s in %s", doc, n+1, frag, path)
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

// TestOptionsTable checks that the README's options table has a row for
// every field of chiws.Options, and no row for a field it lacks.
func TestOptionsTable(t *testing.T) {
	lines, _ := readBlocks(t, readme)
	start := slices.Index(lines, "## Options")
	if start < 0 {
		t.Fatal("README has no ## Options section")
	}
	row := regexp.MustCompile("^\\| `(\\w+)` \\|")
	var rows []string
	for _, l := range lines[start+1:] {
		if strings.HasPrefix(l, "## ") {
			break
		}
		if m := row.FindStringSubmatch(l); m != nil {
			rows = append(rows, m[1])
		}
	}
	var fields []string
	typ := reflect.TypeFor[chiws.Options]()
	for i := range typ.NumField() {
		if f := typ.Field(i); f.IsExported() {
			fields = append(fields, f.Name)
		}
	}
	for _, f := range fields {
		if !slices.Contains(rows, f) {
			t.Errorf("README's options table has no row for Options.%s", f)
		}
	}
	for _, r := range rows {
		if !slices.Contains(fields, r) {
			t.Errorf("README's options table has a row for %s, which Options lacks", r)
		}
	}
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
			ok := wstest.OriginAllowed(m, r)
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
	if wstest.OriginAllowed(chiws.New(chiws.Options{}), r) {
		t.Error("several Origin headers: allowed, origins.md says 403")
	}
	if rows < 10 {
		t.Errorf("only %d rows in the origin table", rows)
	}
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
