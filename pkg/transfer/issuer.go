package transfer

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Files of a CA directory (the chart's transfer Secret, mounted).
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// DefaultLeafLifetime is how long a certificate an Issuer mints is valid; it
// mints the next one at half of it, or as soon as the CA's files change.
const DefaultLeafLifetime = 7 * 24 * time.Hour

// clockSkew backdates a certificate, for peers whose clocks run behind ours.
const clockSkew = 5 * time.Minute

// Issuer gives a node its transfer certificate: it reads the cluster's
// transfer CA (certificate and key, the Secret the chart makes) from a
// directory and mints a certificate for the node's name (both extended key
// usages, the name as CN and DNS SAN) with a key that never leaves the
// process. It re-reads the directory at each handshake, so a rotated CA
// (the Secret updated) is used without a restart.
//
// Every node holds the CA's key, so any node can act as any other towards the
// channel: the channel keeps out whoever is not a Berth node, not one Berth
// node from another (a node plugin is privileged on its host anyway).
type Issuer struct {
	dir, name string
	lifetime  time.Duration
	now       func() time.Time

	mu  sync.Mutex
	cur *issued
}

type issued struct {
	caPEM, keyPEM []byte // the files it was minted from
	pool          *x509.CertPool
	cert          tls.Certificate
	renew         time.Time
}

// NewIssuer reads the CA in dir and mints name's first certificate, so that a
// wrong directory fails at start-up.
func NewIssuer(dir, name string) (*Issuer, error) {
	if name == "" {
		return nil, errors.New("transfer issuer: the node's name is required")
	}
	i := &Issuer{dir: dir, name: name, lifetime: DefaultLeafLifetime, now: time.Now}
	if _, err := i.current(); err != nil {
		return nil, err
	}
	return i, nil
}

// Name is the name the certificates are minted for.
func (i *Issuer) Name() string { return i.name }

// ServerTLS is the server side of mutual TLS with the issuer's certificates:
// TLS 1.3, a client certificate of the CA required.
func (i *Issuer) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cur, err := i.current()
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    cur.pool,
				Certificates: []tls.Certificate{cur.cert},
			}, nil
		},
	}
}

// ClientTLS is the client side for the node named server: this node's
// certificate presented, the server's verified against the CA and that name.
func (i *Issuer) ClientTLS(server string) (*tls.Config, error) {
	if server == "" {
		return nil, errors.New("transfer client TLS: the server's name is required")
	}
	cur, err := i.current()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cur.cert},
		RootCAs:      cur.pool,
		ServerName:   server,
	}, nil
}

// current returns the certificate to use, minting a new one when the CA's
// files changed or the last one is past half its life. When the files cannot be
// read or are not a CA, the last good certificate is kept until it is due, so a
// Secret being rewritten does not fail a handshake.
func (i *Issuer) current() (*issued, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	now := i.now()
	caPEM, errC := os.ReadFile(filepath.Join(i.dir, CACertFile))
	keyPEM, errK := os.ReadFile(filepath.Join(i.dir, CAKeyFile))
	if err := errors.Join(errC, errK); err != nil {
		if i.cur != nil && now.Before(i.cur.renew) {
			return i.cur, nil
		}
		return nil, fmt.Errorf("transfer CA: %w", err)
	}
	if i.cur != nil && now.Before(i.cur.renew) && bytes.Equal(caPEM, i.cur.caPEM) && bytes.Equal(keyPEM, i.cur.keyPEM) {
		return i.cur, nil
	}
	next, err := mint(caPEM, keyPEM, i.name, now, i.lifetime)
	if err != nil {
		if i.cur != nil && now.Before(i.cur.renew) {
			return i.cur, nil
		}
		return nil, fmt.Errorf("transfer CA in %s: %w", i.dir, err)
	}
	i.cur = next
	return next, nil
}

func mint(caPEM, keyPEM []byte, name string, now time.Time, lifetime time.Duration) (*issued, error) {
	caCert, err := parseCert(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CACertFile, err)
	}
	if !caCert.IsCA {
		return nil, fmt.Errorf("%s: the certificate %q is not a CA", CACertFile, caCert.Subject.CommonName)
	}
	caKey, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAKeyFile, err)
	}
	if pub, ok := caKey.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(caCert.PublicKey) {
		return nil, fmt.Errorf("%s does not belong to the certificate in %s", CAKeyFile, CACertFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	if !now.Before(notAfter) {
		return nil, fmt.Errorf("%s: the CA expired on %s", CACertFile, caCert.NotAfter.Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"berth transfer"}},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("minting %s's certificate: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &issued{caPEM: caPEM, keyPEM: keyPEM, pool: pool,
		cert:  tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		renew: now.Add(notAfter.Sub(now) / 2)}, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM certificate in it")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

// parseKey reads a PKCS#1 RSA (what Helm's genCA writes), SEC 1 EC or PKCS#8 key.
func parseKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key in it")
		}
		switch blk.Type {
		case "RSA PRIVATE KEY":
			return x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(blk.Bytes)
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, err
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("a %T cannot sign", k)
			}
			return s, nil
		}
	}
}
