"""Reports of suite and matrix runs: JUnit merged, Markdown and HTML."""
