"""Presenting reports: the table, JSON, Markdown, JUnit and HTML renderers and their charts."""
