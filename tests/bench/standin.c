/* A HIPE stand-in for benchmarks: HIPE's command line (`hipe [-properties K=V ...] SCRIPT`), and only
 * what success needs. lib/batchUtility/hipe.py judges a launch by exit status 0 and the completion
 * marker that the script's appended last line, batchEnd = open("MARKER", "w"); batchEnd.write("end");
 * ..., would write (older versions: open("MARKER", "w").close()): this program writes that marker.
 * If the template the script runs (batchTemplate = compile(open("TEMPLATE"...), older versions
 * exec(compile(open("TEMPLATE"...)))
 * holds a Python dict `SLEEPS = {OBSID: SECONDS, ...}`, it first sleeps the seconds given for the
 * script's `obsid=` (the makespan replay).
 * Built by tests/bench/common.py with gcc into a temporary folder. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(3); }
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) buf = realloc(buf, cap *= 2);
    }
    buf[len] = 0;
    fclose(f);
    return buf;
}

/* The string literal starting at `start` (just after its opening quote), with Python 2 escapes undone. */
static char *unquote(const char *start, const char *end) {
    char *out = malloc(end - start + 1), *o = out;
    for (const char *p = start; p < end && *p != '"'; p++) {
        if (*p == '\\' && p + 1 < end) {
            p++;
            *o++ = *p == 'n' ? '\n' : *p == 'r' ? '\r' : *p;
        } else {
            *o++ = *p;
        }
    }
    *o = 0;
    return out;
}

/* The path in the last non-blank line: batchEnd = open("...", "w"); ... or open("...", "w").close(). */
static char *marker_path(char *text) {
    char *end = text + strlen(text);
    while (end > text && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ')) end--;
    char *line = end;
    while (line > text && line[-1] != '\n') line--;
    if (strncmp(line, "batchEnd = ", 11) == 0) line += 11;
    if (strncmp(line, "open(\"", 6) != 0) return NULL;
    return unquote(line + 6, end);
}

/* SLEEPS is in the template, which the script runs with exec(compile(open("TEMPLATE", "rb").read(), ...)). */
static void maybe_sleep(const char *text) {
    const char *o = strstr(text, "\nobsid="), *exec = strstr(text, "compile(open(\"");
    if (!o || !exec) return;
    exec += strlen("compile(open(\"");
    char *template = read_all(unquote(exec, exec + strlen(exec)));
    const char *sleeps = strstr(template, "SLEEPS = {");
    if (!sleeps) return;
    char key[40];
    snprintf(key, sizeof key, "%lld: ", atoll(o + 7));
    const char *at = sleeps + strlen("SLEEPS = ");
    while ((at = strstr(at + 1, key)) && at[-1] != ' ' && at[-1] != '{') {}   /* a whole key, the first one too */
    if (!at) return;
    double seconds = atof(at + strlen(key));
    struct timespec ts = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {}
}

/* With $HIPE_STANDIN_STARTS naming a file, the wall-clock time this launch began is appended to it,
 * one line each, in one write (tests/bench/bench_spread.py: when the slots' HIPEs really started). */
static void note_start(void) {
    const char *path = getenv("HIPE_STANDIN_STARTS");
    if (!path) return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    char line[64];
    int n = snprintf(line, sizeof line, "%lld.%09ld\n", (long long)now.tv_sec, now.tv_nsec);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) { if (write(fd, line, n) != n) perror(path); close(fd); }
}

int main(int argc, char **argv) {
    note_start();
    if (argc < 2) { fprintf(stderr, "usage: %s [-properties K=V ...] SCRIPT\n", argv[0]); return 2; }
    char *text = read_all(argv[argc - 1]);
    char *marker = marker_path(text);
    if (!marker) { fprintf(stderr, "no completion line in %s\n", argv[argc - 1]); return 4; }
    if (strstr(text, "batchTemplate = ")) {   /* compiled: the marker, empty, before the template runs */
        int made = open(marker, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (made < 0) { perror(marker); return 5; }
        close(made);
    }
    maybe_sleep(text);
    int fd = open(marker, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror(marker); return 5; }
    if (write(fd, "end", 3) != 3) { perror(marker); return 5; }   /* the end reached (an empty one: compiled only) */
    close(fd);
    return 0;
}
