/*
 * json.h - cJSON parsing with an honest status. cJSON returns NULL both for malformed text and
 * for a failed allocation (it allocates with plain malloc; its hooks are process-global, so the
 * library leaves them alone). nv_json_parse tells the two apart with nv_json_check, an
 * allocation-free RFC 8259 checker that is stricter than cJSON: text it accepts, cJSON parses
 * unless memory runs out. The checker also counts values, so a caller can bound what cJSON
 * would allocate before it parses.
 */
#ifndef NVLM_JSON_H
#define NVLM_JSON_H

#include "internal.h"

#include <cJSON.h>

/* Deepest nesting nv_json_check accepts (cJSON's own limit is 1000). */
#define NV_JSON_MAX_DEPTH 512
/* Longest number nv_json_check accepts, in bytes (cJSON reads at most 63). */
#define NV_JSON_MAX_NUMBER 63

typedef struct nv_json_stats {
    size_t values;      /* every value: containers, strings, numbers, literals (keys not counted) */
    size_t top_members; /* members of the top-level object (0 when the text is not an object) */
    size_t end;         /* invalid text: offset of the first byte that breaks the grammar */
    bool trailing;      /* invalid text: one whole value, then bytes other than whitespace */
    size_t nul_string;  /* offset of the first string (key or value) holding the escape \u0000,
                           which a C string cannot carry; SIZE_MAX when none does */
} nv_json_stats;

/* Whether text[0..len) is one JSON value (RFC 8259, an optional UTF-8 byte order mark first,
 * only whitespace after it) within the limits above, with no lone UTF-16 surrogate escape.
 * Never allocates; iterative, so any input is safe. stats may be NULL; values and top_members
 * count what was read (all of it when the text is valid). */
bool nv_json_check(const char *text, size_t len, nv_json_stats *stats);

/* cJSON_ParseWithLengthOpts(text, len, end, 0): the tree (the caller frees it with
 * cJSON_Delete) or NULL. On NULL, *oom is true when nv_json_check accepts the text, i.e. the
 * parse failed for memory (report NVLM_ERR_OUT_OF_MEMORY), false when the text is malformed
 * (NVLM_ERR_FORMAT). end may be NULL; as with cJSON it gets where parsing stopped. */
cJSON *nv_json_parse(const char *text, size_t len, const char **end, bool *oom);

/* The status and message for a NULL from nv_json_parse: NVLM_ERR_OUT_OF_MEMORY with
 * "LABEL: out of memory parsing the JSON" when oom, else NVLM_ERR_FORMAT with "LABEL: WHAT". */
nvlm_status nv_json_fail(void *err_handle, bool oom, const char *label, const char *what);

#endif /* NVLM_JSON_H */
