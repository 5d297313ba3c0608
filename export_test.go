package chiws

import (
	"errors"
	"net/http"
)

// CheckOrigin applies m's origin policy to r, for the tests of the policy
// on its own: nil, or an error with the reason.
func CheckOrigin(m *Middleware, r *http.Request) error {
	if why := m.cfg.origins.refusal(r); why != "" {
		return errors.New("origin refused: " + why)
	}
	return nil
}
