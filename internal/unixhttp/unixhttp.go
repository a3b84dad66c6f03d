// Package unixhttp sends JSON requests to an HTTP server on a unix socket
// (the agent's API, dockerd's API); callers interpret the answers.
package unixhttp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Client is an HTTP client bound to one unix socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// New returns a client for the socket path.
func New(socket string) *Client {
	return &Client{Socket: socket, hc: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

// Response is an answer: its status and (bounded) body.
type Response struct {
	Code   int
	Status string
	Body   []byte
}

// Call sends in (when not nil) as JSON and reads the answer, up to limit bytes.
func (c *Client) Call(method, path string, in any, limit int64) (Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return Response{}, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://unix"+path, body)
	if err != nil {
		return Response{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return Response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return Response{}, fmt.Errorf("read answer: %w", err)
	}
	return Response{Code: resp.StatusCode, Status: resp.Status, Body: b}, nil
}
