"""The read-only web dashboard (`[dashboard] listen`): server-rendered
pages with inline SVG charts, read through models.reads like the CLI.
`server` serves them (GET only), `pages` renders them, `svg` draws the
charts and `html` holds the page frame, its style and its one script."""
