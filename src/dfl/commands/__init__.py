"""The `dfl` subcommands: each module is one command's argparse wiring (`@command`) and its
`run_*` function, calling library code that knows nothing of argparse. `dfl.cli` imports
them only when it builds the parser, so `import dfl` stays light."""
