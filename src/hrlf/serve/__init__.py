"""``hrlf serve``: a web page and an HTTP endpoint for prediction (:mod:`hrlf.serve.app`)."""
