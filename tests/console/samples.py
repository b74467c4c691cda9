"""APVs for the browser tests and `make screenshots`: real-looking unified diffs
across severities, submitted through the JSON API like a producer would."""

from __future__ import annotations

import copy
import uuid
from typing import Any

# One hunk whose line numbers the diff test reads back: old lines 10-13, new 10-14.
#   old 10 / new 10  context  "{"
#   old 11           removed  "if (len > MAX_LEN)"
#          new 11    added    "if (len >= MAX_LEN) {"
#          new 12    added    "log_reject(len);"
#   old 12 / new 13  context  "return -1;"
#   old 13 / new 14  context  "return 0;"
RECORD_PATCH = (
    "--- a/ssl/record/rec_layer_s3.c\n"
    "+++ b/ssl/record/rec_layer_s3.c\n"
    "@@ -10,4 +10,5 @@ int ssl3_check_record_length(size_t len)\n"
    " {\n"
    "-    if (len > MAX_LEN)\n"
    "+    if (len >= MAX_LEN) {\n"
    "+        log_reject(len);\n"
    "         return -1;\n"
    "     return 0;\n"
)

BASE_APV: dict[str, Any] = {
    "apv_code": "APV-OPENSSL-0042",
    "cve_id": "CVE-2026-31337",
    "severity": "high",
    "source": "oraculo",
    "package": {"name": "openssl", "version": "3.0.13", "ecosystem": "debian"},
    "patch": RECORD_PATCH,
    "confidence": 0.91,
    "anomaly_score": 0.82,
    "cvss_score": 8.1,
    "wargaming": {"verdict": "patch_effective", "details": {"exploit_blocked": True}},
}


def apv(**changes: Any) -> dict[str, Any]:
    """A valid APV with a fresh apv_id; keyword arguments replace fields."""
    body = copy.deepcopy(BASE_APV)
    body["apv_id"] = f"apv-{uuid.uuid4().hex[:12]}"
    body.update(changes)
    return body


# -- the screenshot set: a handful of APVs a reviewer would see on a normal day -------

SAMPLES: list[dict[str, Any]] = [
    {
        "apv_code": "APV-LIBXML2-0007",
        "cve_id": "CVE-2026-24113",
        "severity": "critical",
        "source": "oraculo",
        "package": {"name": "libxml2", "version": "2.9.14", "ecosystem": "debian"},
        "confidence": 0.96,
        "anomaly_score": 0.93,
        "cvss_score": 9.8,
        "wargaming": {"verdict": "patch_effective", "details": {"exploit_blocked": True,
                                                                "runs": 40}},
        "patch": (
            "--- a/parser.c\n"
            "+++ b/parser.c\n"
            "@@ -4211,9 +4211,12 @@ xmlParseAttValueComplex(xmlParserCtxtPtr ctxt, int *attlen,\n"
            "     while ((NXT(0) != limit) && (IS_CHAR(c)) && (c != '<')) {\n"
            "         if (c == '&') {\n"
            "             in_space = 0;\n"
            "-            if (len + 10 > buf_size) {\n"
            "-                growBuffer(buf, 10);\n"
            "-            }\n"
            "+            /* An entity reference can expand to XML_PARSER_BUFFER_SIZE bytes;\n"
            "+             * grow by what it needs, not by a fixed 10. */\n"
            "+            if (len + XML_PARSER_BUFFER_SIZE > buf_size) {\n"
            "+                if (xmlParserGrow(ctxt, &buf, &buf_size, len + XML_PARSER_BUFFER_SIZE) < 0)\n"
            "+                    goto mem_error;\n"
            "+            }\n"
            "             if (NXT(1) == '#') {\n"
            "                 int val = xmlParseCharRef(ctxt);\n"
            " \n"
        ),
    },
    {
        "apv_code": "APV-OPENSSL-0042",
        "cve_id": "CVE-2026-31337",
        "severity": "high",
        "source": "oraculo",
        "package": {"name": "openssl", "version": "3.0.13", "ecosystem": "debian"},
        "confidence": 0.91,
        "anomaly_score": 0.82,
        "cvss_score": 8.1,
        "wargaming": {"verdict": "patch_effective", "details": {"exploit_blocked": True}},
        "patch": (
            "--- a/ssl/record/rec_layer_s3.c\n"
            "+++ b/ssl/record/rec_layer_s3.c\n"
            "@@ -1602,10 +1602,14 @@ int ssl3_get_record(SSL *s)\n"
            "         /* Now pull the header and check the length against the maximum. */\n"
            "         n2s(p, rr->length);\n"
            " \n"
            "-        if (rr->length > SSL3_BUFFER_get_len(rbuf) - SSL3_RT_HEADER_LENGTH) {\n"
            "+        if (rr->length > SSL3_RT_MAX_ENCRYPTED_LENGTH\n"
            "+            || rr->length > SSL3_BUFFER_get_len(rbuf) - SSL3_RT_HEADER_LENGTH) {\n"
            "             SSLfatal(s, SSL_AD_RECORD_OVERFLOW, SSL_R_PACKET_LENGTH_TOO_LONG);\n"
            "             return -1;\n"
            "         }\n"
            "+        /* A zero-length record with a MAC still has to be authenticated. */\n"
            "+        if (rr->length == 0 && !SSL_READ_ETM(s))\n"
            "+            goto f_err;\n"
            " \n"
            "         rr->data = rr->input;\n"
            "         rr->orig_len = rr->length;\n"
            "--- a/test/recordlentest.c\n"
            "+++ b/test/recordlentest.c\n"
            "@@ -88,3 +88,4 @@ static int test_record_overflow(int idx)\n"
            "     ADD_TEST(test_record_overflow_max);\n"
            "     ADD_TEST(test_record_overflow_min);\n"
            "+    ADD_TEST(test_record_zero_length_mac);\n"
            "     return 1;\n"
        ),
    },
    {
        "apv_code": "APV-NGINX-0113",
        "cve_id": "CVE-2026-18502",
        "severity": "high",
        "source": "sentinel",
        "package": {"name": "nginx", "version": "1.24.0", "ecosystem": "debian"},
        "confidence": 0.78,
        "anomaly_score": 0.67,
        "cvss_score": 7.5,
        "wargaming": {"verdict": "partially_effective",
                      "details": {"exploit_blocked": False, "note": "DoS still reachable"}},
        "patch": (
            "--- a/src/http/v2/ngx_http_v2.c\n"
            "+++ b/src/http/v2/ngx_http_v2.c\n"
            "@@ -1210,5 +1210,10 @@ ngx_http_v2_state_headers(ngx_http_v2_connection_t *h2c, u_char *pos,\n"
            "     h2c->last_sid = h2c->state.sid;\n"
            " \n"
            "+    if (h2c->new_streams++ >= 2 * h2scf->concurrent_streams) {\n"
            "+        ngx_log_error(NGX_LOG_INFO, h2c->connection->log, 0,\n"
            "+                      \"client sent too many streams at once\");\n"
            "+        return ngx_http_v2_connection_error(h2c, NGX_HTTP_V2_ENHANCE_YOUR_CALM);\n"
            "+    }\n"
            "     if (h2c->state.padding > size) {\n"
            "         ngx_log_error(NGX_LOG_INFO, h2c->connection->log, 0,\n"
            "                       \"client sent padded HEADERS frame \"\n"
        ),
    },
    {
        "apv_code": "APV-PYYAML-0021",
        "cve_id": "CVE-2026-40021",
        "severity": "medium",
        "source": "sentinel",
        "package": {"name": "pyyaml", "version": "6.0.1", "ecosystem": "pypi"},
        "confidence": 0.84,
        "anomaly_score": 0.58,
        "cvss_score": 5.3,
        "patch": (
            "--- a/lib/yaml/constructor.py\n"
            "+++ b/lib/yaml/constructor.py\n"
            "@@ -722,7 +722,8 @@ class FullConstructor(SafeConstructor):\n"
            "     def find_python_name(self, name, mark, unsafe=False):\n"
            "         if not name:\n"
            "             raise ConstructorError(\"while constructing a Python object\", mark,\n"
            "                     \"expected non-empty name appended to the tag\", mark)\n"
            "-        if '.' in name:\n"
            "+        if '.' in name and not unsafe:\n"
            "+            raise ConstructorError(None, None, f\"dotted name {name!r} needs UnsafeLoader\", mark)\n"
            "             module_name, object_name = name.rsplit('.', 1)\n"
            "         else:\n"
        ),
    },
    {
        "apv_code": "APV-ZLIB-0003",
        "cve_id": "CVE-2026-11920",
        "severity": "medium",
        "source": "oraculo",
        "package": {"name": "zlib", "version": "1.2.13", "ecosystem": "debian"},
        "confidence": 0.73,
        "anomaly_score": 0.55,
        "cvss_score": 6.1,
        "patch": (
            "--- a/inflate.c\n"
            "+++ b/inflate.c\n"
            "@@ -763,6 +763,6 @@ int ZEXPORT inflate(z_streamp strm, int flush) {\n"
            "                 if (state->head != Z_NULL &&\n"
            "                     state->head->extra != Z_NULL &&\n"
            "-                    (len = state->head->extra_len - state->length) <\n"
            "+                    (len = state->head->extra_len - state->length) <=\n"
            "                         state->head->extra_max) {\n"
            "                     zmemcpy(state->head->extra + len, next,\n"
            "                             len + copy > state->head->extra_max ?\n"
        ),
    },
    {
        "apv_code": "APV-LESS-0002",
        "cve_id": "CVE-2026-0917",
        "severity": "low",
        "source": "community",
        "package": {"name": "less", "version": "590-2", "ecosystem": "debian"},
        "confidence": 0.62,
        "anomaly_score": 0.41,
        "cvss_score": 3.3,
        "patch": (
            "--- a/filename.c\n"
            "+++ b/filename.c\n"
            "@@ -134,6 +134,8 @@ shell_quoten(constant char *s, size_t slen)\n"
            " \tfor (p = s;  p < s + slen;  p++)\n"
            " \t{\n"
            " \t\tlen++;\n"
            "+\t\tif (*p == '\\n')\n"
            "+\t\t\tuse_quotes = TRUE;\n"
            " \t\tif (*p == openquote || *p == closequote)\n"
            " \t\t\thave_quotes = TRUE;\n"
            " \t\tif (metachar(*p))\n"
        ),
    },
]


def samples() -> list[dict[str, Any]]:
    """The screenshot set, each with a fresh apv_id."""
    return [apv(**sample) for sample in SAMPLES]
