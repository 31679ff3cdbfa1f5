/* tsan_threads.c - C11 threads over pthreads, linked only into SAN=thread
 * builds (make tsan-check).
 *
 * librdkafka makes its threads, mutexes and condition variables with C11's
 * thrd_create, mtx_lock, cnd_wait. glibc (2.34 on) implements those inside
 * libc without going through pthread_create or pthread_mutex_lock, so
 * ThreadSanitizer's interceptors never see them: its allocator then
 * crashes in the first malloc of a thread it did not start (rdk:mock,
 * SEGV in SizeClassAllocator64LocalCache::Allocate), and every lock
 * librdkafka takes would be invisible, making each record it hands us look
 * like a race. The executable's definitions below win over libc's for
 * librdkafka too, and are what glibc does itself (the C11 types have the
 * pthread types' layout), only through the intercepted pthread calls. */
#include <errno.h>
#include <pthread.h>
#include <threads.h>

/* libtsan's annotations: TSan records no memory access in between. */
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);

static int thrd_rc(int rc)
{
    return rc == 0 ? thrd_success : rc == ENOMEM ? thrd_nomem
         : rc == EBUSY ? thrd_busy : rc == ETIMEDOUT ? thrd_timedout : thrd_error;
}

int thrd_create(thrd_t *thr, thrd_start_t func, void *arg)
{
    return thrd_rc(pthread_create((pthread_t *)thr, NULL, (void *(*)(void *))(void (*)(void))func, arg));
}

int thrd_join(thrd_t thr, int *res)
{
    void *ret;
    int rc = pthread_join((pthread_t)thr, &ret);
    if (rc == 0 && res != NULL)
        *res = (int)(long)ret;
    return thrd_rc(rc);
}

int thrd_detach(thrd_t thr) { return thrd_rc(pthread_detach((pthread_t)thr)); }

/* Init and destroy write the lock's memory; librdkafka hands a lock to
 * another thread through its own uninstrumented atomics, so TSan would
 * take the first lock elsewhere for a race with the init (rdk:main's
 * mtx_init vs. rdk:broker's mtx_lock). The lock's own ordering is still
 * tracked: only these writes are left out. */
int mtx_init(mtx_t *m, int type)
{
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    if (type & mtx_recursive)
        pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    int rc = pthread_mutex_init((pthread_mutex_t *)m, &a);
    pthread_mutexattr_destroy(&a);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    return thrd_rc(rc);
}

void mtx_destroy(mtx_t *m)
{
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    pthread_mutex_destroy((pthread_mutex_t *)m);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
}
int mtx_lock(mtx_t *m) { return thrd_rc(pthread_mutex_lock((pthread_mutex_t *)m)); }
int mtx_trylock(mtx_t *m) { return thrd_rc(pthread_mutex_trylock((pthread_mutex_t *)m)); }
int mtx_unlock(mtx_t *m) { return thrd_rc(pthread_mutex_unlock((pthread_mutex_t *)m)); }
int mtx_timedlock(mtx_t *restrict m, const struct timespec *restrict ts)
{
    return thrd_rc(pthread_mutex_timedlock((pthread_mutex_t *)m, ts));
}

int cnd_init(cnd_t *c)
{
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    int rc = pthread_cond_init((pthread_cond_t *)c, NULL);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    return thrd_rc(rc);
}

void cnd_destroy(cnd_t *c)
{
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    pthread_cond_destroy((pthread_cond_t *)c);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
}
int cnd_signal(cnd_t *c) { return thrd_rc(pthread_cond_signal((pthread_cond_t *)c)); }
int cnd_broadcast(cnd_t *c) { return thrd_rc(pthread_cond_broadcast((pthread_cond_t *)c)); }
int cnd_wait(cnd_t *c, mtx_t *m)
{
    return thrd_rc(pthread_cond_wait((pthread_cond_t *)c, (pthread_mutex_t *)m));
}
int cnd_timedwait(cnd_t *restrict c, mtx_t *restrict m, const struct timespec *restrict ts)
{
    return thrd_rc(pthread_cond_timedwait((pthread_cond_t *)c, (pthread_mutex_t *)m, ts));
}
