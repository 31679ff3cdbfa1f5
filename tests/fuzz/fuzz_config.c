/* fuzz_config.c - libFuzzer target for the configuration parsers.
 *
 * The config file (`halflife run --config FILE`), HALFLIFE_* variables and
 * -X key=value arguments are written by operators, but they are text a
 * deploy tool or a templating step assembles, so each input is tried as
 * all three:
 *   - the bytes as a properties file (hl_config_load: lines of any length,
 *     comments, NUL bytes, then the cross-key checks);
 *   - each line as one -X argument (hl_config_set_arg);
 *   - each line as HALFLIFE_<line> in an environment (hl_config_load_env).
 * A configuration that loads is then turned into the worker's options and
 * its Schema Registry client is created from them (URL splitting and
 * redaction; nothing is contacted). A crash, a leak, a sanitizer report or
 * a refusal without a reason is a bug.
 *
 * With HL_FUZZ_SEEDS=DIR set, LLVMFuzzerInitialize writes a few valid
 * files into DIR first (every key type, kafka.* keys, comments). */
#include "config.h"
#include "log.h"
#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_INPUT  (64u << 10)
#define MAX_LINES  64

static char path[256];

static void write_file(const char *file, const void *data, size_t size)
{
    FILE *f = fopen(file, "wb");
    if (f == NULL || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(file);
        abort();
    }
}

/* What the worker does with a configuration that loaded. */
static void use(const hl_config *cfg)
{
    hl_worker_opts o;
    char err[512] = "", shown[1024];
    hl_config_worker_opts(cfg, &o);
    if (hl_config_log_level(cfg) < HL_LOG_DEBUG) abort();
    if (o.registry.urls != NULL && o.registry.urls[0] != '\0') {
        hl_registry *r = hl_registry_create(&o.registry, err, sizeof err);
        if (r == NULL && err[0] == '\0') abort();
        if (r != NULL) hl_registry_urls_redacted(r, shown, sizeof shown);
        hl_registry_destroy(r);
    }
}

static void try_load(const char *file, char *const *envp, char *const *args, int n_args)
{
    char err[512] = "";
    hl_config *cfg = hl_config_create();
    if (cfg == NULL) abort();
    int rc = hl_config_load(cfg, file, envp, args, n_args, err, sizeof err);
    if (rc != 0 && err[0] == '\0') abort();
    if (rc == 0) use(cfg);
    hl_config_destroy(cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MAX_INPUT) return 0;
    write_file(path, data, size);
    try_load(path, NULL, NULL, 0);

    /* The same lines as arguments and as variables (a NUL ends a line). */
    char *text = malloc(size + 1), *args[MAX_LINES + 1], *envp[MAX_LINES + 1];
    int n = 0;
    memcpy(text, data, size);
    text[size] = '\0';
    for (char *s = text, *nl; s != NULL && *s != '\0' && n < MAX_LINES; s = nl ? nl + 1 : NULL) {
        if ((nl = strchr(s, '\n')) != NULL) *nl = '\0';
        args[n] = s;
        envp[n] = malloc(strlen(s) + 10);
        sprintf(envp[n], "HALFLIFE_%s", s);
        n++;
    }
    args[n] = envp[n] = NULL;
    try_load(NULL, NULL, args, n);
    try_load(NULL, envp, NULL, 0);
    for (int i = 0; i < n; i++) free(envp[i]);
    free(text);
    return 0;
}

static void remove_file(void)
{
    unlink(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char *const seeds[] = {
        "# worker\n"
        "kafka.bootstrap.servers = localhost:9092\n"
        "group.id=halflife\ninput.topic=events\noutput.topic=recs\n"
        "recs.k=20\nstate.evict.mass=0.001\nrecs.exclude.seen=true\n"
        "log.level=debug\n! another comment\n",
        "schema.registry.url=http://user:secret@a:8081,https://b:8081/\n"
        "schema.registry.timeout.ms=500\ninput.format=confluent\n"
        "weight.click=2.5\nevent.min.ts.ms=0\nevent.max.ts.ms=4102444800000\n",
        "state.store=kafka\nstate.flush.ms=250\nkafka.security.protocol=plaintext\n"
        "recs.index=ivf\nrecs.index.nlist=64\nstate.history=50\n"
        "recs.exclude.seen.events=10\n",
    };
    const char *dir = getenv("HL_FUZZ_SEEDS");
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof path, "%s/fuzz_config.%ld.properties", tmp, (long)getpid());
    atexit(remove_file);
    hl_log_set_level(HL_LOG_ERROR + 1);       /* quiet: the refusals are the point */
    if (dir && *dir) {
        for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
            char file[512];
            snprintf(file, sizeof file, "%s/seed%zu.properties", dir, i);
            write_file(file, seeds[i], strlen(seeds[i]));
        }
    }
    return 0;
}
