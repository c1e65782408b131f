"""Property test: whatever the query string, never a 500; 400 bodies carry a reason."""

from __future__ import annotations

from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, given, settings, strategies as st

from weather_producer import create_app

_text = st.one_of(st.none(), st.text(max_size=14), st.text(alphabet="0123456789 -abcXYZ", max_size=12))


def _app(fake_url: str, key_file: str):
    return create_app({"TESTING": True, "OWM_BASE_URL": fake_url, "OWM_API_KEY_FILE": key_file,
                       "OWM_CONNECT_TIMEOUT": 0.5, "OWM_READ_TIMEOUT": 1.0, "INSTANCE_ID": "prop"})


def test_never_500_for_any_zip_or_country(fake_owm, owm_key_file):
    app = _app(fake_owm.url, str(owm_key_file))
    client = app.test_client()

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(zip_raw=_text, country_raw=_text, extra=st.booleans())
    def check(zip_raw, country_raw, extra):
        params = {}
        if zip_raw is not None:
            params["zip"] = zip_raw
        if country_raw is not None:
            params["country"] = country_raw
        if extra:
            params["appid"] = "x"
        r = client.get("/weather", query_string=params)
        assert r.status_code in (200, 400, 404, 503), (params, r.status_code, r.data[:200])
        body = r.get_json()
        assert isinstance(body, dict)
        if r.status_code == 400:
            assert isinstance(body.get("error"), str) and body["error"]
        if r.status_code == 200:
            assert body["stale"] in (True, False) and body["zip"]

    check()


def test_never_500_with_owm_failing(fake_owm, owm_key_file):
    app = _app(fake_owm.url, str(owm_key_file))
    client = app.test_client()
    for mode in ("error", "429", "401"):
        fake_owm.set_mode(mode)

        @settings(max_examples=40, deadline=None)
        @given(zip_raw=st.text(max_size=12))
        def check(zip_raw):
            r = client.get("/weather", query_string={"zip": zip_raw})
            assert r.status_code in (400, 503), (zip_raw, r.status_code)
            assert r.get_json()["error"]

        check()


# Raw query strings: arbitrary bytes (percent-encoded or not), broken escapes, repeated and
# empty keys - what a scanner or a broken client sends.
_raw_piece = st.one_of(
    st.binary(max_size=12).map(quote_from_bytes),
    st.sampled_from(["zip=", "zip=10001", "country=", "country=us", "country=USA", "%", "%zz", "%ff",
                     "%00", "&", "&&", "=", "zip", "zip=%C0%AF", "zip=+", "zip=%20%20", "country=%FF%FE",
                     "zip=10001&zip=10002", "zip=1;2", "zip=" + "9" * 40]),
)
_raw_query = st.lists(_raw_piece, max_size=6).map("&".join)


def test_never_500_for_any_raw_query_string(fake_owm, owm_key_file):
    app = _app(fake_owm.url, str(owm_key_file))
    client = app.test_client()
    current = {"mode": "ok"}

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(qs=_raw_query, mode=st.sampled_from(["ok", "ok", "error", "429"]))
    def check(qs, mode):
        if current["mode"] != mode:
            fake_owm.set_mode(mode)
            current["mode"] = mode
        r = client.get("/weather", query_string=qs)
        assert r.status_code in (200, 400, 404, 503), (qs, r.status_code, r.data[:200])
        body = r.get_json()
        assert isinstance(body, dict), (qs, r.data[:200])
        if r.status_code == 400:
            assert isinstance(body.get("error"), str) and len(body["error"]) > 5, body
        elif r.status_code == 503:
            assert body.get("error"), body
        elif r.status_code == 200:
            assert body["zip"] and body["stale"] in (True, False)

    check()
