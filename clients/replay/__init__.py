"""Case replay: YAML cases (docs/cases.md) run against any server that implements
settlesim.v1, compared field by field (money exact to the fen), reported for people
and for CI. `cases` parses, `runner` runs, `reports` and `html` report, `command`
is what `settlesim replay` and `settlesim conformance` do."""
