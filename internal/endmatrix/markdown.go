package endmatrix

import (
	"cmp"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
)

// TableMarker is the line after which docs/lifecycle.md holds the table
// that Markdown renders.
const TableMarker = "<!-- table: ends -->"

// Markdown renders Rows as the Markdown table of docs/lifecycle.md: one
// line per row, after a header and its separator, each ending in "\n".
func Markdown() string {
	var b strings.Builder
	b.WriteString("| The socket ends | Cause | On the wire | Close log | Counters | `Done` fires |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- |\n")
	for _, tt := range Rows {
		cells := []string{
			apiNames.ReplaceAllString(tt.Name, "`$1`"),
			alternatives(tt.Want, causeCell),
			alternatives(tt.Want, func(o Outcome) string {
				if o.Crossed {
					return wireCell(o.Wire) + " (both closed at once: the peer's own, echoed)"
				}
				return wireCell(o.Wire)
			}),
			alternatives(tt.Want, logCell),
			alternatives(tt.Want, countersCell),
			doneCell(tt),
		}
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	return b.String()
}

// alternatives renders one cell of a row's outcomes: each different one,
// joined by "or".
func alternatives(os []Outcome, cell func(Outcome) string) string {
	var out []string
	for _, o := range os {
		if s := cell(o); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return strings.Join(out, " *or* ")
}

// apiNames are the names of chiws's API in row names, set in code.
var apiNames = regexp.MustCompile(`\b(Close\(\d+\)|CloseWith\([^)]*\)|CloseNowWith\([^)]*\)|CloseNow|CloseRead|ReadLimit|ReadJSON|Read|Writer|Write|Wait|Shutdown|panic\(http\.ErrAbortHandler\))`)

// causeCell renders the cause: its sentinel, the handler's own, the code.
func causeCell(o Outcome) string {
	by := ""
	if o.By != nil {
		by = " and the handler's cause"
	}
	return fmt.Sprintf("`%s`%s, %s", sentinelName(o.Cause), by, codeCell(o.Code))
}

// logCell renders the close log: closedBy, closeCode, and cause if any.
func logCell(o Outcome) string {
	s := fmt.Sprintf("`%s` %d", o.ClosedBy, o.LogCode)
	if o.By != nil {
		s += fmt.Sprintf(", `cause` %q", o.By.Error())
	}
	return s
}

func sentinelName(err error) string {
	names := []struct {
		err  error
		name string
	}{
		{chiws.ErrClosedByPeer, "ErrClosedByPeer"},
		{chiws.ErrClosedByServer, "ErrClosedByServer"},
		{chiws.ErrKeepAliveTimeout, "ErrKeepAliveTimeout"},
		{chiws.ErrShuttingDown, "ErrShuttingDown"},
		{chiws.ErrHandlerReturned, "ErrHandlerReturned"},
		{chiws.ErrHandlerPanicked, "ErrHandlerPanicked"},
		{chiws.ErrConnectionLost, "ErrConnectionLost"},
	}
	for _, n := range names {
		if errors.Is(err, n.err) {
			return n.name
		}
	}
	return fmt.Sprint(err)
}

func codeCell(c websocket.StatusCode) string {
	if c == None {
		return "no code"
	}
	return fmt.Sprint(int(c))
}

func wireCell(c websocket.StatusCode) string {
	switch c {
	case None:
		return "no close frame"
	case Gone:
		return "(client gone)"
	}
	return fmt.Sprint(int(c))
}

func countersCell(o Outcome) string {
	var c []string
	for _, n := range []struct {
		name string
		v    uint64
	}{{"EarlyReturns", o.EarlyReturns}, {"Panics", o.Panics}, {"KeepAliveTimeouts", o.KeepAliveTimeouts}} {
		if n.v != 0 {
			c = append(c, fmt.Sprintf("%s %d", n.name, n.v))
		}
	}
	if len(c) == 0 {
		return "none"
	}
	return strings.Join(c, ", ")
}

func doneCell(tt Row) string {
	var within string
	switch tt.Done.Within {
	case AfterCloseTimeout:
		within = "within `CloseTimeout`"
	case AfterKeepAlive:
		within = "within `KeepAliveInterval` + `KeepAliveTimeout`"
	case AfterShutdownDeadline:
		within = "at the deadline of `Shutdown`'s context"
	}
	if tt.Done.Call == "" {
		return cmp.Or(within, "within a round trip")
	}
	calls := strings.Split(tt.Done.Call, " or ")
	for i, c := range calls {
		calls[i] = "`" + c + "`"
	}
	list := calls[len(calls)-1]
	if len(calls) > 1 {
		list = strings.Join(calls[:len(calls)-1], ", ") + " or " + list
	}
	by := "by the return of the handler's " + list
	if within == "" {
		return by
	}
	return within + ", " + by
}
