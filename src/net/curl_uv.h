/*
 * libcurl's multi socket interface driven by a libuv loop: curl says which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION, each one becomes a uv_poll_t) and when to call it back
 * (CURLMOPT_TIMERFUNCTION, one uv_timer_t); we hand readiness back with
 * curl_multi_socket_action and report finished transfers.
 *
 * Owners add easy handles they configured themselves (URL, options, CURLOPT_PRIVATE) and get
 * done(easy, result, ud) once per finished transfer. done runs from a libuv callback after
 * curl_multi_socket_action has returned, never inside a curl callback, so it may remove and
 * clean up that easy handle, add new ones or close the whole tun_curl_uv.
 */
#ifndef TUN_NET_CURL_UV_H
#define TUN_NET_CURL_UV_H

#include <curl/curl.h>
#include <uv.h>

struct tun_curl_uv;

typedef void (*tun_curl_uv_done_fn)(CURL *easy, CURLcode result, void *ud);

/* Create one multi handle on `loop`. Returns 0, or TUN_ENOMEM. */
int tun_curl_uv_new(uv_loop_t *loop, tun_curl_uv_done_fn done, void *ud, struct tun_curl_uv **out);

/* Start a transfer. Returns 0, or TUN_EINTERNAL when curl refuses the handle. */
int tun_curl_uv_add(struct tun_curl_uv *m, CURL *easy);

/* Stop a transfer (finished or not); done is not called for it afterwards. The caller still
 * owns `easy` and cleans it up. */
void tun_curl_uv_remove(struct tun_curl_uv *m, CURL *easy);

/*
 * Remove every easy handle first (curl 7.88 cannot list them). Closes the polls and the timer
 * at once, so done is never called again; memory and the multi handle go once libuv has
 * closed the handles. Safe inside done.
 */
void tun_curl_uv_close(struct tun_curl_uv *m);

#endif
