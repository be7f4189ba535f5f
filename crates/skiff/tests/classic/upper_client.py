# 客户端合法 (the HMAC client), as the tutorial wrote it.
from socket import *
import hmac,os
import sys  # skiff: the port comes from argv so tests can use a free one
secret_key=b'linhaifeng bang bang bang'
def conn_auth(conn):
    '''
    验证客户端到服务器的链接
    :param conn:
    :return:
    '''
    msg=conn.recv(32)
    h=hmac.new(secret_key,msg,'md5')  # skiff: Python 3 needs the digest named
    digest=h.digest()
    conn.sendall(digest)
def client_handler(ip_port,bufsize=1024):
    tcp_socket_client=socket(AF_INET,SOCK_STREAM)
    tcp_socket_client.connect(ip_port)
    conn_auth(tcp_socket_client)
    while True:
        data=input('>>: ').strip()
        if not data:continue
        if data == 'quit':break
        tcp_socket_client.sendall(data.encode('utf-8'))
        respone=tcp_socket_client.recv(bufsize)
        print(respone.decode('utf-8'))
    tcp_socket_client.close()
if __name__ == '__main__':
    ip_port=('127.0.0.1',int(sys.argv[1]) if len(sys.argv) > 1 else 9999)  # skiff: port from argv
    bufsize=1024
    client_handler(ip_port,bufsize)
