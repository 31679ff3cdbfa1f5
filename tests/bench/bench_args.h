/* bench_args.h - every benchmark's command line, checked before it runs:
 * --help or -h prints its usage and exits 0, and an argument it does not
 * take is refused (exit 2) with a line naming it and the usage. Before
 * this, `bench_swap --help` ran the whole benchmark (minutes at 1M users)
 * and a mistyped flag was ignored as if it were not there. Each bench
 * says which of its arguments is the first it cannot take (NULL: none);
 * its default run, without arguments, is unchanged. */
#ifndef HL_BENCH_ARGS_H
#define HL_BENCH_ARGS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Exits 0 with usage on stdout when any argument is --help or -h; exits 2
 * naming bad, usage on stderr, when bad is not NULL; else returns. */
static inline void bench_args(const char *name, int argc, char **argv, const char *usage,
                              const char *bad)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            exit(0);
        }
    if (bad != NULL) {
        fprintf(stderr, "%s: cannot take the argument \"%s\" (--help for usage)\n%s", name,
                bad, usage);
        exit(2);
    }
}

/* 1 when s is a whole positive integer. */
static inline int bench_arg_count(const char *s)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    return *s != '\0' && *end == '\0' && v > 0;
}

/* 1 when s is a whole number (an option's value: a share, a flag). */
static inline int bench_arg_number(const char *s)
{
    char *end;
    (void)strtod(s, &end);
    return *s != '\0' && *end == '\0';
}

/* The first of argv[from..] that is not a positive integer (NULL: none);
 * more than max of them: the first beyond max. */
static inline const char *bench_bad_counts(int argc, char **argv, int from, int max)
{
    for (int i = from; i < argc; i++)
        if (!bench_arg_count(argv[i]) || i - from >= max)
            return argv[i];
    return NULL;
}

/* A directory argument: anything but an option (a word starting '-'). */
static inline const char *bench_bad_dir(int argc, char **argv)
{
    if (argc > 2)
        return argv[2];
    return argc == 2 && argv[1][0] == '-' ? argv[1] : NULL;
}

#endif
