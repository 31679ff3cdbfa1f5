/* test.h - the tiny harness every tests/test_*.c uses.
 *
 * A test file lists its cases in main() with RUN(case_fn). Each case prints
 * one line, "PASS file.case" or "FAIL file.case: why" (or SKIP), which
 * tests/run.sh counts into the one "N passed, N failed" line of make test.
 * CHECK keeps going after a failure so one run shows every broken check. */
#ifndef HL_TEST_H
#define HL_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_case_failed;      /* the running case has failed */
static int t_n_failed;         /* cases failed in this file */
static const char *t_skip_why; /* set by SKIP() */

#define CHECK(cond) do {                                                    \
    if (!(cond)) {                                                          \
        if (!t_case_failed) printf("FAIL %s.%s: ", T_SUITE, t_case_name);   \
        else printf("    also: ");                                          \
        printf("%s:%d: CHECK(%s)\n", __FILE__, __LINE__, #cond);            \
        t_case_failed = 1;                                                  \
    }                                                                       \
} while (0)

#define CHECKF(cond, ...) do {                                              \
    if (!(cond)) {                                                          \
        if (!t_case_failed) printf("FAIL %s.%s: ", T_SUITE, t_case_name);   \
        else printf("    also: ");                                          \
        printf("%s:%d: ", __FILE__, __LINE__);                              \
        printf(__VA_ARGS__);                                                \
        printf("\n");                                                       \
        t_case_failed = 1;                                                  \
    }                                                                       \
} while (0)

/* Relative-or-absolute closeness of two float arrays (llm.c's check_tensor). */
#define CHECK_CLOSE(got, want, n, tol) do {                                 \
    for (size_t t_i = 0; t_i < (size_t)(n); t_i++) {                        \
        double t_g = (got)[t_i], t_w = (want)[t_i];                         \
        double t_d = fabs(t_g - t_w), t_s = fabs(t_w) > 1.0 ? fabs(t_w) : 1.0;\
        if (!(t_d <= (tol) * t_s)) {                                        \
            CHECKF(0, "%s[%zu] = %.9g, want %.9g (tol %g)", #got, t_i,      \
                   t_g, t_w, (double)(tol));                                \
            break;                                                          \
        }                                                                   \
    }                                                                       \
} while (0)

#define SKIP(...) do {                                                      \
    static char t_buf[512];                                                 \
    snprintf(t_buf, sizeof t_buf, __VA_ARGS__);                             \
    t_skip_why = t_buf;                                                     \
    return;                                                                 \
} while (0)

static const char *t_case_name;

#define RUN(fn) do {                                                        \
    t_case_name = #fn; t_case_failed = 0; t_skip_why = NULL;                \
    fflush(stdout);                                                         \
    fn();                                                                   \
    if (t_skip_why) printf("SKIP %s.%s: %s\n", T_SUITE, #fn, t_skip_why);   \
    else if (!t_case_failed) printf("PASS %s.%s\n", T_SUITE, #fn);          \
    else t_n_failed++;                                                      \
    fflush(stdout);                                                         \
} while (0)

#define TEST_EXIT() return t_n_failed ? 1 : 0

/* Directory holding the shared datasets, or NULL (tests then SKIP). */
static inline const char *t_datasets_dir(void)
{
    const char *d = getenv("HL_DATASETS");
    return d && *d ? d : NULL;
}

#endif
