"""Report and release: what reviewers read and what may leave the secure server.

Owns: disclosure control (`policy`: the run's `DisclosurePolicy` and rounding; `screen_release`: the
row-level release of tables with estimates; `disclosure`: the entry point every boundary imports, and the
release of tables of counts), the reviewer's report (`report`), the export folder (`export`) and provenance records (`provenance`).
May import the shared top-level modules; it reads stage outputs only through their files.
"""
