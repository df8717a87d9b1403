"""The ground floor: what bench, tracer, analysis and the CLI share, importing none of them.

- `common.schema`   the tables of a run directory: columns and types
- `common.meta`     meta.json as typed, versioned dataclasses (`Meta`, its parameters, counts)
- `common.rundir`   the one writer (`create_run_dir`, `TableWriter`, `write_meta`) and the one
                    reader (`RunDir`) of a run directory (docs/run-directory.md)
- `common.vocab`    the shared words: TCP states, event kinds, connection flags, histograms,
                    outcomes, and `describe_event()`, an event in words
- `common.errors`   `SpikeTraceError`, the one user-facing error type
- `common.netns`    network namespaces: create, enter (a thread or a process), read sysctls
- `common.leftovers` what a run creates that outlives a killed process, and its cleanup

Nothing here imports pandas at module level (bench processes keep pandas out), nor BCC.
"""

__version__ = "0.1.0"
