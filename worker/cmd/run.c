/* run.c - `halflife run`: the worker process of DESIGN.md section 7. Reads
 * the configuration (file < environment < -X), opens the model, starts the
 * HTTP endpoint and runs the worker (worker.c) until SIGTERM or SIGINT.
 *
 * Signals: the first asks for a graceful stop (finish the batch, publish,
 * snapshot, commit, leave the group) and arms a last-resort alarm a few
 * seconds past shutdown.timeout.ms; a second signal exits at once.
 *
 * Exit status: 0 after a clean stop; 2 for bad usage or configuration; 1
 * when the worker cannot start (model, snapshot.dir, ...), fails, stops
 * because a partition assigned to it cannot be served (its restore failed,
 * no memory for its shard: event=partition_failed names it) or because its
 * producer failed fatally (event=producer_fatal), or stops
 * without having saved every shard it owned (a final snapshot failed: the
 * worker logs event=shutdown_unsaved naming the partitions), so an
 * orchestrator's logs show it.
 *
 * A stop during start-up is a clean stop too (exit 0): main.c blocks
 * SIGTERM, SIGINT and SIGHUP from the program's first instruction until
 * the handlers below are in, and every wait of start-up (the registry,
 * the broker, the item topic, restores between partitions) and the
 * recs.index=ivf index build gives up on it. The worker logs event=worker_stopped_before_start with the step:
 * configuration, model, worker_create, items_topic, group_join or
 * restore. Only the dynamic loader's milliseconds before the first
 * instruction keep the default action (exit 143). */
#include "cmd.h"
#include "cmd_common.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "worker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t run_signalled;
static volatile sig_atomic_t run_reload;    /* SIGHUP: look at model.path now */
static unsigned run_deadline_s;         /* set once before the handlers */

static void run_usage(FILE *f)
{
    fprintf(f, "usage: halflife run [-c FILE] [-X key=value]...\n"
               "       halflife run --help | --help-markdown\n\n"
               "Consumes behaviour events, keeps each user's decayed interest state and\n"
               "publishes refreshed top-K lists. Without kafka.bootstrap.servers an\n"
               "embedded broker runs inside the process. SIGTERM/SIGINT stop gracefully;\n"
               "SIGHUP looks at model.path for a new model at once.\n\n"
               "Exit status: 0 after a clean stop (also one during start-up); 2 a usage or\n"
               "configuration error; 1 when it cannot start (a model it cannot open, a port\n"
               "it cannot listen on, ...), when a partition assigned to it cannot be served\n"
               "(its restore failed), its producer fails fatally, or the stop could not\n"
               "snapshot every partition it owned; 128 + the signal's number when a second\n"
               "SIGTERM/SIGINT ends it at once (143, 130), and 142 (SIGALRM) when a stop\n"
               "runs 5 s past shutdown.timeout.ms.\n\n"
               "--help-markdown prints the keys below as the Markdown table of README.md\n"
               "(make readme-keys).\n\n");
    hl_config_print_help(f);
}

/* model.dir (default <snapshot.dir>/models) must be a directory or not
 * exist yet (it is then made). A file there was accepted and each served
 * model's copy failed (model_keep_failed), which showed only at a restart
 * with another model: the users of the snapshots were rebuilt from their
 * rings instead of migrated. */
static int check_model_dir(const hl_config *cfg, char *errbuf, size_t errlen)
{
    char dir[4352];
    const char *set = hl_config_str(cfg, "model.dir");
    struct stat st;
    snprintf(dir, sizeof dir, set ? "%s" : "%s/models", set ? set : hl_config_str(cfg,
             "snapshot.dir"));
    /* a snapshot.dir that is no directory is persist.c's to refuse */
    if (set == NULL && (stat(hl_config_str(cfg, "snapshot.dir"), &st) != 0 ||
                        !S_ISDIR(st.st_mode)))
        return 0;
    int bad = stat(dir, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
    if (bad == 0 || bad == ENOENT)
        return 0;
    return hl_err(errbuf, errlen, HL_EINVAL, "model.dir%s %s: %s: set model.dir to a "
                  "directory (made if missing) where the served models are kept",
                  set ? "" : " (default <snapshot.dir>/models)", dir, strerror(bad));
}

/* schemas.dir, set, must be a directory when events' writer schemas are
 * read from it (Confluent framing, no registry). A wrong path was accepted
 * and every event of a schema id other than the built-in 1 was then
 * dead-lettered as unknown_schema. The default (schemas) may be missing:
 * id 1 is built in. */
static int check_schemas_dir(const hl_config *cfg, char *errbuf, size_t errlen)
{
    const char *dir = hl_config_str(cfg, "schemas.dir");
    struct stat st;
    if (!hl_config_is_set(cfg, "schemas.dir") || hl_config_str(cfg, "schema.registry.url") ||
        hl_config_int(cfg, "input.format") == 1)            /* raw: no schema ids */
        return 0;
    int bad = stat(dir, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
    if (bad == 0)
        return 0;
    return hl_err(errbuf, errlen, HL_EINVAL, "schemas.dir %s: %s: set it to the directory "
                  "of the events' writer schemas <id>.avsc, or leave it unset", dir,
                  strerror(bad));
}

/* Parses argv into cfg. -1 to go on, else the exit status. */
static int run_parse(hl_config *cfg, int argc, char **argv)
{
    extern char **environ;
    const char *file = NULL;
    char **args = calloc((size_t)argc + 1, sizeof *args);
    char err[512];
    int n_args = 0, rc = -1;
    for (int i = 1; i < argc && rc < 0; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            run_usage(stdout);
            rc = 0;
        } else if (!strcmp(argv[i], "--help-markdown")) {
            hl_config_print_markdown(stdout);
            rc = 0;
        } else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "-X")) &&
                   hl_cmd_need_value("run", argv[i], i + 1 < argc ? argv[i + 1] : NULL)) {
            rc = 2;
        } else if (!strcmp(argv[i], "-c") && file != NULL) {
            /* The second used to replace the first without a word. */
            fprintf(stderr, "halflife run: -c given twice ('%s', then '%s'): one properties "
                    "file only; put overrides in HALFLIFE_<KEY> variables or -X\n", file,
                    argv[i + 1]);
            rc = 2;
        } else if (!strcmp(argv[i], "-c")) {
            file = argv[++i];
        } else if (!strcmp(argv[i], "-X")) {
            args[n_args++] = argv[++i];
        } else if (argv[i][0] == '-') {
            rc = hl_cmd_unknown_option("run", argv[i]);
        } else {
            fprintf(stderr, "halflife run: unexpected argument '%s' (see --help)\n", argv[i]);
            rc = 2;
        }
    }
    /* A stop while -c is read (a FIFO waits for its writer) interrupts
     * the read with EINTR: that is the stop, not a bad file to report. */
    if (rc < 0 && hl_config_load(cfg, file, environ, args, n_args, err, sizeof err) != 0) {
        if (!run_signalled)
            fprintf(stderr, "halflife run: %s\n", err);
        rc = 2;
    }
    if (rc < 0 && (check_model_dir(cfg, err, sizeof err) != 0 ||
                   check_schemas_dir(cfg, err, sizeof err) != 0)) {
        fprintf(stderr, "halflife run: %s\n", err);
        rc = 2;
    }
    if (rc < 0 && hl_config_str(cfg, "model.path") == NULL) {
        fprintf(stderr, "halflife run: model.path is required (-X model.path=FILE)\n");
        rc = 2;
    }
    free(args);
    return rc;
}

/* The first signal asks for a graceful stop and arms a last-resort alarm a
 * few seconds past shutdown.timeout.ms (SIGALRM's default action ends the
 * process); the second exits at once. The flag is stored atomically: it is
 * the worker's start_abort, which /readyz reads from the HTTP thread, and a
 * volatile sig_atomic_t is only safe within one thread. */
static void on_signal(int sig)
{
    if (run_signalled)
        _exit(128 + sig);
    __atomic_store_n(&run_signalled, 1, __ATOMIC_RELAXED);
    alarm(run_deadline_s);
}

static void on_hup(int sig)
{
    (void)sig;
    run_reload = 1;
}

/* Installed first thing, so a SIGTERM while the configuration is read,
 * the model loads or the worker starts (Kubernetes may send one at any
 * moment) is a clean stop too, not the default action's exit 143. The
 * last-resort alarm's delay follows shutdown.timeout.ms once it is known. */
static void install_signals(void)
{
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    run_deadline_s = 30 + 5;            /* shutdown.timeout.ms's default */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct sigaction hup = {.sa_handler = on_hup};
    sigemptyset(&hup.sa_mask);
    sigaction(SIGHUP, &hup, NULL);
}

/* /metrics and the probes on metrics.port (none when 0). -1 when it
 * cannot listen (logged). */
static int start_http(const hl_config *cfg, hl_metrics *reg, hl_worker *w, hl_http **http)
{
    char err[512];
    int port = (int)hl_config_int(cfg, "metrics.port");
    const char *bind_addr = hl_config_str(cfg, "metrics.bind");
    if (port <= 0)
        return 0;
    if ((*http = hl_http_start(bind_addr, port, reg, hl_worker_ready, hl_worker_live, w, err,
                               sizeof err)) == NULL) {
        hl_log(HL_LOG_ERROR, "http_start_failed", "port=%d err=\"%s\"", port, err);
        return -1;
    }
    hl_log(HL_LOG_INFO, "metrics_listening", "bind=%s port=%d", bind_addr, hl_http_port(*http));
    return 0;
}

/* A stop before the worker runs: nothing was owned yet, so nothing is
 * handed over and the exit is clean (0). step names where it came: the
 * configuration, the model, or a part of the worker (why says which, e.g.
 * a wait for the registry or the broker). */
static int stopped_while_starting(const char *step, const char *why)
{
    hl_log(HL_LOG_INFO, "worker_stopped_before_start", "step=%s owned_partitions=0%s%s%s",
           step, why ? " why=\"" : "", why ? why : "", why ? "\"" : "");
    return 0;
}

int hl_cmd_run(int argc, char **argv)
{
    char err[512];
    int rc = 1;
    install_signals();
    hl_cmd_signals_unblock();           /* a stop sent while loading comes now */
    hl_config *cfg = hl_config_create();
    hl_model *m = NULL;
    hl_metrics *reg = NULL;
    hl_http *http = NULL;
    hl_worker *w = NULL;
    hl_worker_opts o;
    int prc = cfg ? run_parse(cfg, argc, argv) : 1;
    if (prc >= 0 || run_signalled) {
        rc = run_signalled && prc != 0 ? stopped_while_starting("configuration", NULL) : prc;
        goto out;
    }
    hl_log_set_level(hl_config_log_level(cfg));
    hl_config_worker_opts(cfg, &o);
    o.reload_sig = &run_reload;
    run_deadline_s = (unsigned)(o.shutdown_timeout_ms / 1000) + 5;
    o.start_abort = &run_signalled;     /* a SIGTERM while the worker starts */
    const char *model_path = hl_config_str(cfg, "model.path");
    if ((m = hl_model_open(model_path, err, sizeof err)) == NULL) {
        hl_log(HL_LOG_ERROR, "model_open_failed", "path=%s err=\"%s\"", model_path, err);
        goto out;
    }
    if (run_signalled) {
        rc = stopped_while_starting("model", NULL);
        goto out;
    }
    reg = hl_metrics_create();
    if ((w = hl_worker_create(&o, m, reg, err, sizeof err)) == NULL && !run_signalled) {
        hl_log(HL_LOG_ERROR, "worker_create_failed", "err=\"%s\"", err);
        goto out;
    }
    if (run_signalled) {
        rc = stopped_while_starting("worker_create", w == NULL ? err : NULL);
        goto out;
    }
    if (start_http(cfg, reg, w, &http) != 0)
        goto out;
    rc = hl_worker_run(w, &run_signalled) == 0 ? 0 : 1;
    alarm(0);
    if (rc != 0) {
        /* The worker may have abandoned librdkafka handles whose threads
         * still run (close_within): freeing what they use is not safe. */
        hl_http_stop(http);
        _exit(rc);
    }
out:
    hl_http_stop(http);
    hl_worker_destroy(w);
    hl_metrics_destroy(reg);
    hl_model_close(m);
    hl_config_destroy(cfg);
    return rc;
}
