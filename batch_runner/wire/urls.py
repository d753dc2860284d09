"""The API base URL: what is accepted, and how endpoint paths join onto it. Pure."""

from __future__ import annotations

from yarl import URL


def check_base_url(text: str) -> URL:
    """The base URL as a yarl URL; ValueError (in plain words) unless it is an
    absolute http(s) URL with a host and nothing that cannot be combined with
    endpoint paths (a query, a fragment) or with the bearer key (user:password).

    A path is kept: `https://gateway.example/zimage` is a prefix of every call.
    """
    shown = repr(text)
    try:
        url = URL(text.strip())
        port = url.port
    except ValueError as exc:
        raise ValueError(f"base URL {shown} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(
            f"base URL {shown} must start with http:// or https://"
            + (f" (not {url.scheme}://)" if url.scheme and url.host else "")
        )
    if not url.host:
        raise ValueError(f"base URL {shown} has no host")
    if port is None or not 0 < port < 65536:
        raise ValueError(f"base URL {shown} has an invalid port")
    if url.query_string or url.fragment:
        raise ValueError(f"base URL {shown} must not have a query or a fragment")
    if url.user is not None or url.password is not None:
        raise ValueError(
            f"base URL {shown} must not carry a user or password "
            "(the API key is sent as a bearer token)"
        )
    return url


def api_url(base: URL, path: str) -> URL:
    """`path` (like `/v1/images/zimage`) under the base URL's own path, if any."""
    return base.with_path(base.path.rstrip("/") + "/" + path.lstrip("/"))
