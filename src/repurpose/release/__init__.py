"""Report and release: what reviewers read and what may leave the secure server.

Owns: disclosure control (`disclosure`, the one function applied at every export boundary), the
reviewer's report (`report`), the export folder (`export`) and provenance records (`provenance`).
May import the shared top-level modules; it reads stage outputs only through their files.
"""
