/* libFuzzer harness: the INI config reader and --set overrides on arbitrary bytes.
 *
 * The input is read as a whole config (mt_config_load_string), then each of its lines is
 * applied as a --set assignment. Refusals are fine; crashes, sanitizer reports and the checks
 * below are not. A config that loads must print (mt_config_format) as text that loads again
 * and prints the same: the effective config stored in every checkpoint is read back that way. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metatrain/config.h"
#include "fuzz_util.h"

/* Prints cfg, loads the text over defaults and prints that again: both texts must match. */
static void check_round_trip(const mt_config *cfg) {
    static char first[1 << 16], second[1 << 16];
    static mt_config again;
    size_t n = mt_config_format(cfg, first, sizeof first);
    FUZZ_CHECK(n < sizeof first);
    mt_config_defaults(&again);
    FUZZ_CHECK(mt_config_load_string(&again, first, "round trip") == MT_OK);
    FUZZ_CHECK(mt_config_format(&again, second, sizeof second) == n);
    FUZZ_CHECK(memcmp(first, second, n) == 0);
    mt_error_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static mt_config cfg;
    char *text = fuzz_cstring(data, size);
    if (!text) return 0;

    mt_config_defaults(&cfg);
    if (mt_config_load_string(&cfg, text, "fuzz.ini") == MT_OK) {
        (void)mt_config_validate(&cfg);
        check_round_trip(&cfg);
    }
    mt_error_clear();

    mt_config_defaults(&cfg);
    int all_set = 1;
    for (char *line = text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        all_set &= mt_config_set(&cfg, line, "--set") == MT_OK;
        mt_error_clear();
    }
    if (all_set) check_round_trip(&cfg);
    free(text);
    return 0;
}
