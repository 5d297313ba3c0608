// Package snippets holds the code shown in the guides under docs/. Each
// ```go block of a guide is a verbatim excerpt of a file in this directory
// tree (docs_test.go checks it), so the guides' code compiles with the
// module and the tests here run it.
package snippets
