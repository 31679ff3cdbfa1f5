/* snapshot.c - `halflife snapshot inspect|dump FILE`: look into a shard
 * snapshot without a worker.
 *
 * inspect prints one JSON object (header, trailer, counts, CRC verdict);
 * dump prints one JSON line per user with its state, so the snapshots of two
 * runs can be compared with diff (crash tests do). Both read through
 * hl_snapshot_read(), the loader's own parser, so what they accept is
 * exactly what a worker would. A damaged file gets a message on stderr and
 * exit status 1; inspect still prints what it read when only the CRC is
 * wrong, with "crc_ok":false.
 *
 * The output is valid JSON whatever the file holds: a float that is not
 * finite (a NaN or infinite mass, as an event of weight 1e38 once made)
 * prints as null, and a byte that is not part of valid UTF-8 (a user id
 * from before the codec checked) as U+FFFD, so a reader can still parse
 * the line and find the broken row. */
#include "cmd.h"
#include "cmd_common.h"
#include "fnv.h"

#include "snapshot.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
        "usage: halflife snapshot inspect FILE\n"
        "       halflife snapshot dump [--values] FILE\n\n"
        "inspect  prints the file's header, trailer and counts as one JSON object:\n"
        "         file, bytes, version (of the format), topic, partition,\n"
        "         next_offset, model_fingerprint, dim, n_heads, half_life_ms,\n"
        "         history, changelog_offset and changelog_epoch (with\n"
        "         state.store=kafka, where a restore reads on; 0 with file), users,\n"
        "         hist_entries, min_t_ref_ms, max_t_ref_ms, max_last_offset (null\n"
        "         without users), newest_ts_ms, active_seq, sweep_cursor, crc32c\n"
        "         (as stored) and crc_ok.\n"
        "dump     prints one JSON line per user in file order: user, row,\n"
        "         t_ref_ms, last_offset, active_seq, m (the masses as stored: each\n"
        "         head at its base time, t_ref_ms rounded down to the head's grid,\n"
        "         up to 2^-12 above), m_at_t_ref (the masses at t_ref_ms), s_hash\n"
        "         (FNV-1a of the head vectors' bytes, stored at the bases too;\n"
        "         --values prints s itself) and hist, the history as\n"
        "         [item, type, ts_ms] oldest first.\n\n"
        "Floats that are not finite print as null, bytes that are not valid\n"
        "UTF-8 as U+FFFD, so both always print valid JSON.\n\n"
        "A damaged file (truncated, bit flips, wrong version) is reported on\n"
        "stderr with exit status 1. The format is in schemas/snapshot.md.\n");
}

static void print_info(const char *path, const hl_snapshot_info *in)
{
    FILE *f = stdout;
    fprintf(f, "{\"file\":");
    hl_cmd_json_str(f, path, strlen(path));
    fprintf(f, ",\"bytes\":%llu,\"version\":%u,\"topic\":", (unsigned long long)in->bytes,
            in->version);
    hl_cmd_json_str(f, in->meta.topic, strlen(in->meta.topic));
    fprintf(f, ",\"partition\":%d,\"next_offset\":%lld,\"model_fingerprint\":\"%016llx\","
            "\"dim\":%d,\"n_heads\":%d,\"half_life_ms\":[", (int)in->meta.partition,
            (long long)in->meta.next_offset, (unsigned long long)in->meta.model_fingerprint,
            in->dim, in->n_heads);
    for (int h = 0; h < in->n_heads; h++)
        hl_cmd_json_num(f, h ? "," : "", 17, in->half_life_ms[h]);
    fprintf(f, "],\"history\":%d,\"changelog_offset\":%lld,\"changelog_epoch\":%lld,"
            "\"users\":%llu,\"hist_entries\":%llu", in->history,
            (long long)in->meta.changelog_offset, (long long)in->meta.changelog_epoch,
            (unsigned long long)in->n_rows, (unsigned long long)in->hist_entries);
    if (in->n_rows > 0)
        fprintf(f, ",\"min_t_ref_ms\":%lld,\"max_t_ref_ms\":%lld,\"max_last_offset\":%lld",
                (long long)in->min_t_ref_ms, (long long)in->max_t_ref_ms,
                (long long)in->max_last_offset);
    else
        fprintf(f, ",\"min_t_ref_ms\":null,\"max_t_ref_ms\":null,\"max_last_offset\":null");
    fprintf(f, ",\"newest_ts_ms\":%lld,\"active_seq\":%llu,\"sweep_cursor\":%u,"
            "\"crc32c\":\"%08x\",\"crc_ok\":%s}\n", (long long)in->table_meta.newest_ts_ms,
            (unsigned long long)in->table_meta.active_seq, in->table_meta.sweep_cursor,
            in->crc_stored, in->crc_ok ? "true" : "false");
}

static int inspect(const char *path)
{
    hl_snapshot_info in;
    char err[1024];
    int rc = hl_snapshot_read(NULL, path, &in, NULL, NULL, err, sizeof err);

    if (rc == 0 || rc == HL_ECRC)
        print_info(path, &in);
    if (rc != 0) {
        fprintf(stderr, "halflife snapshot inspect: %s\n", err);
        return 1;
    }
    return 0;
}

static void print_floats(FILE *f, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        hl_cmd_json_num(f, i ? "," : "", 9, (double)x[i]);
}

/* The row's masses decayed from the heads' bases to t_ref (what "m", the
 * stored bytes, is up to 2^-12 above: decay.h); nulls if the file's
 * half-lives make no decay, which the reader has refused already. */
static void print_masses_at_t_ref(FILE *f, const hl_snapshot_info *in, const hl_row_view *v)
{
    hl_decay d;
    float g[HL_MAX_HEADS];
    int ok = hl_decay_init(&d, in->n_heads, in->dim, in->half_life_ms, NULL, 0) == 0;
    if (ok)
        hl_decay_to(&d, v->t_ref_ms, v->t_ref_ms, g);
    for (int h = 0; h < in->n_heads; h++)
        hl_cmd_json_num(f, h ? "," : "", 9, ok ? (double)v->m[h] * g[h] : NAN);
}

static int dump_row(void *arg, const hl_snapshot_info *in, uint32_t row,
                    const hl_row_view *v)
{
    int values = *(int *)arg;
    size_t n_s = (size_t)in->n_heads * (size_t)in->dim;
    FILE *f = stdout;

    fprintf(f, "{\"user\":");
    hl_cmd_json_str(f, v->user, v->user_len);
    fprintf(f, ",\"row\":%u,\"t_ref_ms\":%lld,\"last_offset\":%lld,\"active_seq\":%llu,\"m\":[",
            row, (long long)v->t_ref_ms, (long long)v->last_offset,
            (unsigned long long)v->active_seq);
    print_floats(f, v->m, (size_t)in->n_heads);
    fprintf(f, "],\"m_at_t_ref\":[");
    print_masses_at_t_ref(f, in, v);
    if (values) {
        fprintf(f, "],\"s\":[");
        print_floats(f, v->s, n_s);
        fprintf(f, "]");
    } else {
        fprintf(f, "],\"s_hash\":\"%016llx\"",
                (unsigned long long)hl_fnv1a64(HL_FNV64_BASIS, v->s, n_s * sizeof(float)));
    }
    fprintf(f, ",\"hist\":[");
    for (int i = 0; i < v->n_hist; i++) {
        int k = hl_row_hist_index(v, i);
        fprintf(f, "%s[%d,%d,%lld]", i ? "," : "", (int)v->hist_item[k], (int)v->hist_type[k],
                (long long)v->hist_ts_ms[k]);
    }
    fprintf(f, "]}\n");
    return 0;
}

static int dump(const char *path, int values)
{
    hl_snapshot_info in;
    char err[1024];
    int rc = hl_snapshot_read(NULL, path, &in, dump_row, &values, err, sizeof err);

    fflush(stdout);
    if (rc != 0) {
        fprintf(stderr, "halflife snapshot dump: %s\n", err);
        return 1;
    }
    return 0;
}

int hl_cmd_snapshot(int argc, char **argv)
{
    const char *verb = argc > 1 ? argv[1] : NULL, *path = NULL;
    int values = 0;

    if (verb && (!strcmp(verb, "--help") || !strcmp(verb, "-h") || !strcmp(verb, "help"))) {
        usage(stdout);
        return 0;
    }
    if (verb != NULL && verb[0] == '-')
        return hl_cmd_unknown_option("snapshot", verb);
    if (verb == NULL || (strcmp(verb, "inspect") != 0 && strcmp(verb, "dump") != 0)) {
        usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--values") && !strcmp(verb, "dump")) {
            values = 1;
            continue;
        }
        if (argv[i][0] == '-')
            return hl_cmd_unknown_option("snapshot", argv[i]);
        if (path != NULL) {
            fprintf(stderr, "halflife snapshot %s: unexpected argument '%s'\n", verb, argv[i]);
            return 2;
        }
        path = argv[i];
    }
    if (path == NULL) {
        usage(stderr);
        return 2;
    }
    return !strcmp(verb, "inspect") ? inspect(path) : dump(path, values);
}
