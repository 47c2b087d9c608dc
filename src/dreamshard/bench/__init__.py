"""The paper-style benchmark: config schema and the packaged default config
(``config``), typed results (``results``), the runner (``runner``), the Markdown
report (``report``) and plots (``plots``)."""
