# udp服务端: the tutorial's pseudo-code made runnable, with its BUFSIZE and
# its UDP address ('127.0.0.1', 8080) from the socketserver example.
from socket import *
import sys  # skiff: the port comes from argv so tests can use a free one
ip_port=('127.0.0.1',int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
BUFSIZE=1024
ss=socket(AF_INET,SOCK_DGRAM) #创建一个服务器的套接字
ss.bind(ip_port) #绑定服务器套接字
while True: #服务器无限循环
    data,addr=ss.recvfrom(BUFSIZE) # 对话(接收与发送)
    ss.sendto(data.upper(),addr)
ss.close() # 关闭服务器套接字
