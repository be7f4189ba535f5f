# udp客户端: the tutorial's pseudo-code made runnable, with the >>: loop of
# its other clients.
from socket import *
import sys  # skiff: the port comes from argv so tests can use a free one
ip_port=('127.0.0.1',int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
BUFSIZE=1024
cs=socket(AF_INET,SOCK_DGRAM) # 创建客户套接字
while True: # 通讯循环
    msg=input('>>: ').strip()
    if not msg:continue
    if msg == 'quit':break
    cs.sendto(msg.encode('utf-8'),ip_port) # 对话(发送/接收)
    back_msg,addr=cs.recvfrom(BUFSIZE)
    print(back_msg.decode('utf-8'))
cs.close() # 关闭客户套接字
