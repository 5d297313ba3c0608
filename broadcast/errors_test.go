package broadcast_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/chiws/chiws/broadcast"
)

// TestForbiddenError: a refusal matches ErrForbidden and Authorize's own
// error through any wrapping, and names its topic.
func TestForbiddenError(t *testing.T) {
	why := errors.New("admins only")
	err := fmt.Errorf("broadcast: join: %w", &broadcast.ForbiddenError{Topic: "admin", Err: why})
	var fe *broadcast.ForbiddenError
	switch {
	case !errors.Is(err, broadcast.ErrForbidden), !errors.Is(err, why):
		t.Fatalf("%v does not match ErrForbidden and its cause", err)
	case !errors.As(err, &fe) || fe.Topic != "admin":
		t.Fatalf("errors.As(%v) = %+v", err, fe)
	case err.Error() != `broadcast: join: topic forbidden: "admin": admins only`:
		t.Fatalf("Error() = %q", err.Error())
	}
}
