"""Plain-language consent texts, one YAML per purpose (`purpose`, `version`, `title`, `text`)."""
