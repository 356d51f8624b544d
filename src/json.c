/*
 * json.c - an allocation-free JSON checker (RFC 8259 grammar, bounded depth and number length,
 * surrogate escapes paired) and the cJSON parse that uses it to tell a failed allocation from
 * malformed text. Input: untrusted bytes; output: valid or not, plus value counts.
 */
#include "json.h"

#include <string.h>

static size_t skip_ws(const unsigned char *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) {
        i++;
    }
    return i;
}

static bool hex4(const unsigned char *s, size_t i, size_t n, uint32_t *v)
{
    if (i > n || n - i < 4) {
        return false;
    }
    uint32_t x = 0;
    for (size_t k = 0; k < 4; k++) {
        unsigned char c = s[i + k];
        uint32_t d;
        if (c >= '0' && c <= '9') {
            d = (uint32_t)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            d = (uint32_t)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            d = (uint32_t)(c - 'A' + 10);
        } else {
            return false;
        }
        x = x << 4 | d;
    }
    *v = x;
    return true;
}

/* s[*pos] is '"': moves *pos past the closing quote. Raw control characters, unknown escapes
 * and unpaired surrogate escapes (which cJSON refuses) are errors. A \u0000 escape is valid
 * JSON; the first string holding one is recorded in stats->nul_string. */
static bool scan_string(const unsigned char *s, size_t n, size_t *pos, nv_json_stats *stats)
{
    size_t start = *pos;
    size_t i = *pos + 1;
    while (i < n) {
        unsigned char c = s[i];
        if (c == '"') {
            *pos = i + 1;
            return true;
        }
        if (c < 0x20) {
            return false;
        }
        if (c != '\\') {
            i++;
            continue;
        }
        if (i + 1 >= n) {
            return false;
        }
        c = s[i + 1];
        if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
            c == 't') {
            i += 2;
            continue;
        }
        uint32_t u;
        if (c != 'u' || !hex4(s, i + 2, n, &u)) {
            return false;
        }
        i += 6;
        if (u == 0 && stats->nul_string == SIZE_MAX) {
            stats->nul_string = start;
        }
        if (u >= 0xDC00 && u <= 0xDFFF) {
            return false;
        }
        if (u >= 0xD800 && u <= 0xDBFF) {
            uint32_t lo;
            if (i + 1 >= n || s[i] != '\\' || s[i + 1] != 'u' || !hex4(s, i + 2, n, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF) {
                return false;
            }
            i += 6;
        }
    }
    return false;
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? at most NV_JSON_MAX_NUMBER bytes long. */
static bool scan_number(const unsigned char *s, size_t n, size_t *pos)
{
    size_t i = *pos;
    if (i < n && s[i] == '-') {
        i++;
    }
    if (i < n && s[i] == '0') {
        i++;
    } else if (i < n && is_digit(s[i])) {
        while (i < n && is_digit(s[i])) {
            i++;
        }
    } else {
        return false;
    }
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || !is_digit(s[i])) {
            return false;
        }
        while (i < n && is_digit(s[i])) {
            i++;
        }
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) {
            i++;
        }
        if (i >= n || !is_digit(s[i])) {
            return false;
        }
        while (i < n && is_digit(s[i])) {
            i++;
        }
    }
    if (i - *pos > NV_JSON_MAX_NUMBER) {
        return false;
    }
    *pos = i;
    return true;
}

static bool scan_literal(const unsigned char *s, size_t n, size_t *pos, const char *word)
{
    size_t len = strlen(word);
    if (n - *pos < len || memcmp(s + *pos, word, len) != 0) {
        return false;
    }
    *pos += len;
    return true;
}

/* An object member's key and colon; *pos is left at the value. */
static bool scan_key(const unsigned char *s, size_t n, size_t *pos, nv_json_stats *stats)
{
    size_t i = skip_ws(s, *pos, n);
    if (i >= n || s[i] != '"' || !scan_string(s, n, &i, stats)) {
        return false;
    }
    i = skip_ws(s, i, n);
    if (i >= n || s[i] != ':') {
        return false;
    }
    *pos = i + 1;
    return true;
}

/* Records where the text broke the grammar. */
static bool fail(nv_json_stats *stats, size_t at)
{
    stats->end = at;
    return false;
}

bool nv_json_check(const char *text, size_t len, nv_json_stats *stats)
{
    nv_json_stats local;
    if (stats == NULL) {
        stats = &local;
    }
    memset(stats, 0, sizeof *stats);
    stats->nul_string = SIZE_MAX;
    if (text == NULL) {
        return false;
    }
    const unsigned char *s = (const unsigned char *)text;
    uint8_t is_obj[NV_JSON_MAX_DEPTH / 8]; /* bit d: the container at depth d is an object */
    size_t depth = 0;
    size_t i = 0;
    if (len >= 3 && s[0] == 0xEF && s[1] == 0xBB && s[2] == 0xBF) {
        i = 3; /* cJSON skips a byte order mark too */
    }
    for (;;) {
        /* a value starts here */
        i = skip_ws(s, i, len);
        if (i >= len) {
            return fail(stats, i);
        }
        stats->values++;
        unsigned char c = s[i];
        if (c == '{' || c == '[') {
            if (depth == NV_JSON_MAX_DEPTH) {
                return fail(stats, i);
            }
            uint8_t bit = (uint8_t)(1u << (depth % 8));
            if (c == '{') {
                is_obj[depth / 8] |= bit;
            } else {
                is_obj[depth / 8] &= (uint8_t)~bit;
            }
            depth++;
            i = skip_ws(s, i + 1, len);
            if (i < len && s[i] == (c == '{' ? '}' : ']')) {
                i++;
                depth--;
            } else {
                if (c == '{') {
                    stats->top_members += depth == 1;
                    if (!scan_key(s, len, &i, stats)) {
                        return fail(stats, i);
                    }
                }
                continue;
            }
        } else if (c == '"') {
            if (!scan_string(s, len, &i, stats)) {
                return fail(stats, i);
            }
        } else if (c == '-' || is_digit(c)) {
            if (!scan_number(s, len, &i)) {
                return fail(stats, i);
            }
        } else if (!scan_literal(s, len, &i, "true") && !scan_literal(s, len, &i, "false") &&
                   !scan_literal(s, len, &i, "null")) {
            return fail(stats, i);
        }
        /* a value ended: close containers until a comma asks for the next value */
        for (;;) {
            i = skip_ws(s, i, len);
            if (depth == 0) {
                stats->trailing = i != len;
                stats->end = i;
                return i == len;
            }
            if (i >= len) {
                return fail(stats, i);
            }
            bool obj = (is_obj[(depth - 1) / 8] >> ((depth - 1) % 8)) & 1u;
            if (s[i] == ',') {
                i++;
                if (obj) {
                    stats->top_members += depth == 1;
                    if (!scan_key(s, len, &i, stats)) {
                        return fail(stats, i);
                    }
                }
                break;
            }
            if (s[i] != (obj ? '}' : ']')) {
                return fail(stats, i);
            }
            i++;
            depth--;
        }
    }
}

cJSON *nv_json_parse(const char *text, size_t len, const char **end, bool *oom)
{
    *oom = false;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, end, 0);
    if (root == NULL) {
        *oom = nv_json_check(text, len, NULL);
    }
    return root;
}

nvlm_status nv_json_fail(void *err_handle, bool oom, const char *label, const char *what)
{
    if (oom) {
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "%s: out of memory parsing the JSON",
                        label);
    }
    return nv_error(err_handle, NVLM_ERR_FORMAT, "%s: %s", label, what);
}
