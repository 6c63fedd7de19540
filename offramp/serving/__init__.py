"""The online endpoint's library half, below Ray: what a request may hold (`requests`), the
batch pipeline's tokenize, stage and finalize steps run on the texts of concurrent requests
(`tagger`), and the counts a replica keeps (`stats`). The Serve deployment that uses them is
`actors/endpoint.py`; `pipelines/serve.py` plans and starts it."""
