"""Property tests (hypothesis): invariants over generated inputs, no root needed."""
