// Package snippets holds the code shown in the README and the guides under
// docs/. Each ```go block that follows a <!-- snippet: path --> marker is
// an excerpt of a file in this directory tree, verbatim up to its
// indentation (docs_test.go checks it), so the documents' code compiles
// with the module and the tests here run it. Code that needs the broker
// modules is in ../brokersnippets, a module of its own.
package snippets
