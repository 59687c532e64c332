"""The web dashboard: server-rendered pages, a JSON API and Prometheus metrics over the job store.

Why Starlette + Jinja2 + uvicorn: the dashboard is a handful of pages and a
small JSON API over a store that already exists, so it needs routing, a
template engine and an ASGI server, and nothing else. Starlette is a small
routing/request layer with no ORM, no pydantic models and no plugin system;
Jinja2 escapes every value by default (job params are user data); uvicorn is
the standard ASGI server. Server-Sent Events (live updates) need nothing more
than a streaming response. The JavaScript is one hand-written file with no
third-party code, so the Content-Security-Policy can forbid everything but
``'self'``.

Layout: ``app.py`` builds the application (routes, middleware, error pages);
``auth.py`` is login, sessions, revocation and CSRF; ``limits.py`` the
rate limits, stream caps and body size; ``network.py`` the Host check, the
client's address through trusted proxies and the security headers;
``settings.py`` the ``BGRUNNER_DASHBOARD_*`` settings and the secrets' strength;
``inputs.py`` bounded parsing of numbers from URLs and forms;
``state.py`` holds what the views share (per-thread store connections,
cached counts); ``views/`` holds the pages, the actions, the API and the event
streams; ``forms.py`` turns a method's signature into a dispatch form;
``charts.py`` draws the overview's SVG; ``jobview.py`` reads a job's log
events, output and process; ``metrics.py`` is the Prometheus collector;
``server.py`` starts uvicorn.

The web layer reads and changes jobs only through the ``Store`` interface and
``bgrunner.jobs``; it contains no SQL. Its dependencies are imported here and
below only, so the rest of bgrunner runs without them (the ``dashboard`` extra).
"""
